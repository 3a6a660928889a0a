"""A workflow is untrusted data: Load Custom Reward only offers the reward files the user installed
in models/reward_models/custom/, and bad widget values are refused when the prompt is queued."""

import json
import os
import textwrap

import pytest
from harness import ComfyError

pytestmark = pytest.mark.comfyui


def custom_reward_prompt(function: str) -> dict:
    return {
        "reward": {"class_type": "DenseGRPO_LoadCustomReward", "inputs": {"function": function}},
        "image": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 0}},
        "score": {
            "class_type": "DenseGRPO_ScoreImages",
            "inputs": {"images": ["image", 0], "reward_model": ["reward", 0], "prompt": "anything"},
        },
    }


@pytest.fixture(scope="module")
def installed(comfy):
    folder = os.path.join(comfy.models_dir, "reward_models", "custom")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "brightness.py"), "w") as f:
        f.write(
            textwrap.dedent("""
            def reward(images, prompts):
                return images.mean(dim=(1, 2, 3)) + 0.25
        """)
        )
    with open(os.path.join(folder, "two.py"), "w") as f:
        f.write(
            'REWARDS = ["dark", "half"]\n\ndef dark(images, prompts):\n    return 1 - images.mean(dim=(1, 2, 3))\n\n'
            "def half(images, prompts):\n    return images.mean(dim=(1, 2, 3)) * 0 + 0.5\n"
        )
    return folder


def test_load_custom_reward_lists_the_installed_reward_functions(comfy, installed):
    choices = comfy.object_info("DenseGRPO_LoadCustomReward")["DenseGRPO_LoadCustomReward"]["input"]["required"][
        "function"
    ][0]
    assert choices == ["brightness.py:reward", "two.py:dark", "two.py:half"]


def test_an_installed_custom_reward_scores_images(comfy, installed):
    entry = comfy.run(custom_reward_prompt("brightness.py:reward"))
    assert json.loads(entry["outputs"]["score"]["text"][0])["scores"] == [0.25, 0.25]
    entry = comfy.run(custom_reward_prompt("two.py:half"))
    assert json.loads(entry["outputs"]["score"]["text"][0])["scores"] == [0.5, 0.5]


@pytest.mark.parametrize("function", ["os:system", "subprocess:run", "../../evil.py:reward", "brightness.py:nope"])
def test_a_workflow_naming_anything_else_in_load_custom_reward_is_refused_before_it_runs(comfy, installed, function):
    with pytest.raises(
        ComfyError, match=r"(?s)prompt refused.*(not an installed custom reward|not a custom reward choice)"
    ):
        comfy.queue(custom_reward_prompt(function))


def test_empty_training_prompts_are_refused_when_queued(comfy):
    from test_training_in_comfyui import train_prompt

    p = train_prompt("empty_prompts", iterations=1)
    p["train"]["inputs"]["prompts"] = "  \n "
    del p["train"]["inputs"]["options"], p["train_options"]  # no options node: no prompts_file can come
    with pytest.raises(ComfyError, match=r"(?s)prompt refused.*input 'prompts' is empty"):
        comfy.queue(p)


def test_empty_training_prompts_with_an_options_node_are_refused_when_the_train_node_runs(comfy):
    from test_training_in_comfyui import train_prompt

    p = train_prompt("empty_prompts_options", iterations=1)  # the options node might have named a prompts_file
    p["train"]["inputs"]["prompts"] = "  \n "
    with pytest.raises(ComfyError, match=r"DenseGRPO Train LoRA: input 'prompts' is empty"):
        comfy.run(p)


def test_resuming_an_unknown_job_is_refused_when_queued(comfy):
    from test_training_in_comfyui import train_prompt

    with pytest.raises(ComfyError, match=r"(?s)prompt refused.*input 'resume_job' .*unknown job id"):
        comfy.queue(train_prompt("resume_unknown", iterations=1, resume="abcdefabcdef"))
