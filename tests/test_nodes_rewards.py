"""Reward nodes without ComfyUI: file choices, loading a weightless reward, scoring, weighted sums."""

import json

import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS
from nodes.reward_nodes import CombineRewards, ScoreImages, list_entries, resolve_entry


def test_every_registered_reward_with_files_has_a_loader_node_with_a_path_input():
    from densegrpo_core.rewards import list_rewards

    loaders = [c for k, c in NODE_CLASS_MAPPINGS.items() if k.startswith("DenseGRPO_Load")]
    described = " ".join(c.DESCRIPTION for c in loaders)
    for spec in list_rewards():
        if spec.needs_path:
            assert spec.display_name in described and f"models/reward_models/{spec.folder}/" in described


def test_reward_choices_list_the_folder_and_its_entries(tmp_path):
    (tmp_path / "pickscore" / "v1").mkdir(parents=True)
    (tmp_path / "pickscore" / "notes.txt").write_text("x")
    assert list_entries([str(tmp_path)], "pickscore") == ["pickscore", "pickscore/notes.txt", "pickscore/v1"]
    assert list_entries([str(tmp_path)], "hpsv2") == []


def test_reward_paths_outside_the_reward_folders_are_refused(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="input 'path'"):
        resolve_entry("../elsewhere", [str(tmp_path / "models")], "node")


def test_loader_without_files_names_the_folder_to_fill():
    loader = NODE_CLASS_MAPPINGS["DenseGRPO_LoadPickScore"]()
    with pytest.raises(ValueError, match=r"input 'path' is empty.*models/reward_models/pickscore/"):
        loader.execute(device="cpu", path="(no files found: see the tooltip)")


def test_jpeg_loader_needs_no_files_and_scores_images():
    (reward,) = NODE_CLASS_MAPPINGS["DenseGRPO_LoadJPEGCompressibility"]().execute(device="cpu")
    flat, noisy = torch.full((1, 32, 32, 3), 0.5), torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    out = ScoreImages().execute(torch.cat([flat, noisy]), reward, "anything")
    scores = json.loads(out["result"][1])["scores"]
    assert scores[0] > scores[1]  # a flat image compresses better


def test_score_node_refuses_a_prompt_count_that_does_not_match_the_images():
    (reward,) = NODE_CLASS_MAPPINGS["DenseGRPO_LoadJPEGCompressibility"]().execute(device="cpu")
    with pytest.raises(ValueError, match="input 'prompt' has 2 lines for 3 images"):
        ScoreImages().execute(torch.rand(3, 8, 8, 3), reward, "a\nb")


def test_score_node_refuses_images_outside_zero_one():
    (reward,) = NODE_CLASS_MAPPINGS["DenseGRPO_LoadJPEGCompressibility"]().execute(device="cpu")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ScoreImages().execute(torch.full((1, 8, 8, 3), 2.0), reward, "a")


def test_combined_reward_reports_each_term():
    load = NODE_CLASS_MAPPINGS["DenseGRPO_LoadJPEGCompressibility"]()
    (a,) = load.execute(device="cpu")
    (b,) = NODE_CLASS_MAPPINGS["DenseGRPO_LoadJPEGIncompressibility"]().execute(device="cpu")
    (combined,) = CombineRewards().execute(a, 1.0, b, 0.5)
    out = json.loads(ScoreImages().execute(torch.rand(2, 16, 16, 3), combined, "x")["result"][1])
    terms = out["terms"]
    expected = [t1 + 0.5 * t2 for t1, t2 in zip(*terms.values())]
    assert out["scores"] == pytest.approx(expected, rel=1e-6)
