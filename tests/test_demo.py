"""The demo end to end on a micro budget: every output file and the summary.json contract."""

import json

import pytest
from PIL import Image

from densegrpo_core.app import demo
from densegrpo_core.models.lora import read_lora_metadata


def micro_budget(monkeypatch, iterations: int, steps: int) -> None:
    """The quick demo shrunk to seconds: `iterations` of everything, T = `steps`, a rank-2 LoRA."""
    monkeypatch.setattr(
        demo,
        "QUICK",
        demo.DemoBudget(
            calib_iterations=iterations,
            calib_prompts=2,
            calib_group=2,
            iterations=iterations,
            prompts_per_iteration=2,
            group_size=2,
            eval_every=1,
            eval_seeds=(0,),
        ),
    )
    monkeypatch.setattr(
        demo,
        "TOY_TRAIN",
        {**demo.TOY_TRAIN, "steps": steps, "eval_steps": steps, "lora_rank": 2, "lora_alpha": 4, "train_batch": 2},
    )


def test_demo_writes_every_output_and_summary_contract(tmp_path, monkeypatch):
    micro_budget(monkeypatch, iterations=2, steps=3)
    demo.run_demo(str(tmp_path), quick=True)
    for name in (
        "summary.json",
        "reward_curves.png",
        "dense_rewards.png",
        "psi.json",
        "psi.png",
        "lora_dense_grpo.safetensors",
    ):
        assert (tmp_path / name).is_file(), name
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["format"] == "densegrpo.summary/1" and s["device"] == "cpu" and s["seeds"] == [0]
    assert s["nfe_per_trajectory"] == {"fused": 6, "naive": 9}
    for method, nfe in (("dense_grpo", 6), ("dense_grpo_uniform", 6), ("flow_grpo", 3)):
        m = s["methods"][method]
        assert m["iterations"] == [0, 1, 2] and len(m["reward_mean"]) == 3
        assert m["nfe_per_trajectory"] == nfe and m["wall_s"] > 0
        assert m["eval_reward"] == m["reward_mean"][-1]
    assert len(s["psi"]) == 3
    assert s["methods"]["dense_grpo"]["psi"] == s["psi"]
    assert s["methods"]["dense_grpo_uniform"]["psi"] == s["methods"]["flow_grpo"]["psi"] == [0.7] * 3
    assert s["methods"]["dense_grpo_uniform"]["advantage_mode"] == "dense_grpo"
    assert s["grid"] == "sd3" and len(s["tau"]) == 4 and s["tau"][-2] < 0.02
    assert read_lora_metadata(tmp_path / "lora_dense_grpo.safetensors")["advantage_mode"] == "dense_grpo"
    assert isinstance(s["flow_grpo_improved"], bool) and set(s["iterations_to_reach_flow_grpo_final"]) == set(
        s["methods"]
    )
    assert Image.open(tmp_path / "reward_curves.png").size[0] > 300


def test_demo_in_two_worker_processes_gives_the_same_figures(tmp_path, monkeypatch):
    """`--workers 2` trains the runs in spawned processes: same summary figures as one process."""
    micro_budget(monkeypatch, iterations=1, steps=2)
    one = demo.run_demo(str(tmp_path / "one"), quick=True, workers=1)
    two = demo.run_demo(str(tmp_path / "two"), quick=True, workers=2)
    assert two["workers"] == 2
    for method in demo.METHODS:
        assert two["methods"][method]["reward_mean"] == pytest.approx(one["methods"][method]["reward_mean"], abs=1e-5)


def test_iterations_to_reach_is_the_first_evaluation_at_or_above_the_target():
    assert demo.iterations_to_reach([0, 5, 10, 15], [0.50, 0.55, 0.61, 0.60], target=0.60, start=0.50) == 10


def test_iterations_to_reach_is_none_when_the_target_is_never_reached():
    assert demo.iterations_to_reach([0, 5, 10], [0.50, 0.55, 0.58], target=0.60, start=0.50) is None


def test_iterations_to_reach_is_none_when_the_target_is_not_above_the_pretrained_reward():
    # Flow-GRPO ending below the pretrained model: iteration 0 "reaches" it, which measures nothing
    assert demo.iterations_to_reach([0, 5, 10], [0.58, 0.57, 0.59], target=0.57, start=0.58) is None
