"""Issue 13 without ComfyUI: which custom reward files a workflow may choose, and names relative to ComfyUI's
folders in what the server sends."""

import os

import pytest
import torch

from densegrpo_core.rewards.custom_files import (
    list_custom_rewards,
    load_reward_file,
    resolve_custom_reward,
    reward_functions,
)
from nodes.public import public_view


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return str(folder / name)


def test_a_file_with_def_reward_offers_reward(tmp_path):
    assert reward_functions(
        write(tmp_path, "a.py", "def reward(images, prompts):\n    return images.mean((1, 2, 3))\n")
    ) == ["reward"]


def test_a_rewards_list_names_the_offered_functions(tmp_path):
    path = write(tmp_path, "b.py", "REWARDS = ['x', 'y', 'not an identifier']\ndef reward(i, p): ...\n")
    assert reward_functions(path) == ["x", "y"]


def test_a_file_without_either_offers_nothing_and_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path, "c.py", f"open({str(marker)!r}, 'w').close()\ndef score(i, p): ...\n")
    assert reward_functions(path) == [] and list_custom_rewards([str(tmp_path)]) == []
    assert not marker.exists()


def test_listing_skips_broken_private_and_non_python_files(tmp_path):
    write(tmp_path, "broken.py", "def reward(:\n")
    write(tmp_path, "_private.py", "def reward(i, p): ...\n")
    write(tmp_path, "notes.txt", "def reward(i, p): ...\n")
    write(tmp_path, "ok.py", "def reward(i, p): ...\n")
    assert list_custom_rewards([str(tmp_path), str(tmp_path / "missing")]) == ["ok.py:reward"]


@pytest.mark.parametrize("choice", ["os:system", "ok.py:other", "../ok.py:reward", "sub/ok.py:reward", ""])
def test_anything_but_a_listed_choice_is_refused(tmp_path, choice):
    write(tmp_path, "ok.py", "def reward(i, p): ...\n")
    with pytest.raises(ValueError, match="not an installed custom reward|not a custom reward choice"):
        resolve_custom_reward(choice, [str(tmp_path)])


def test_a_chosen_file_is_loaded_by_path_and_scores_images(tmp_path):
    write(tmp_path, "bright.py", "def reward(images, prompts):\n    return images.mean(dim=(1, 2, 3))\n")
    reward = load_reward_file(*resolve_custom_reward("bright.py:reward", [str(tmp_path)]))
    torch.testing.assert_close(reward(torch.full((2, 4, 4, 3), 0.5), ["a", "b"]), torch.tensor([0.5, 0.5]))


ROOTS = {"models/loras": "/srv/comfy/models/loras", "output": "/srv/comfy/output", "ComfyUI": "/srv/comfy"}


def test_paths_under_a_root_become_relative_to_it():
    view = public_view(
        {
            "loras": ["/srv/comfy/models/loras/densegrpo/x_00001.safetensors"],
            "folder": "/srv/comfy/output/densegrpo/jobs/abc",
        },
        ROOTS,
    )
    assert view == {"loras": ["densegrpo/x_00001.safetensors"], "folder": "densegrpo/jobs/abc"}


def test_other_absolute_paths_become_base_names_and_texts_name_the_folder():
    view = public_view(
        {
            "a": "/etc/secret/file.txt",
            "error": "FileNotFoundError: /srv/comfy/output/j/checkpoint",
            "traceback": "File /srv/comfy/x.py",
            "n": 3,
        },
        ROOTS,
    )
    assert view == {"a": "file.txt", "error": "FileNotFoundError: output/j/checkpoint", "n": 3}
    assert os.sep == "/" or True
