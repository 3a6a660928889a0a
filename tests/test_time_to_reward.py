"""The time-to-reward benchmark: target times and the pipeline end to end on a tiny budget."""

import json

import pytest

from densegrpo_core.app.time_to_reward import METHODS, Budget, run_time_to_reward, time_to_target

POINTS = [
    {"seconds": 0.0, "nfe": 0, "reward": 0.50},
    {"seconds": 10.0, "nfe": 800, "reward": 0.52},
    {"seconds": 20.0, "nfe": 1600, "reward": 0.51},
    {"seconds": 30.0, "nfe": 2400, "reward": 0.55},
]


def test_time_to_target_is_the_first_evaluation_that_reaches_it():
    assert time_to_target(POINTS, 0.515) == 10.0
    assert time_to_target(POINTS, 0.515, "nfe") == 800
    assert time_to_target(POINTS, 0.5) == 0.0


def test_an_unreached_target_has_no_time():
    assert time_to_target(POINTS, 0.6) is None


def test_the_pipeline_runs_end_to_end_on_a_tiny_budget(tmp_path):
    tiny = Budget(train_s=0.01, eval_every_s=0.01, prompts_per_iteration=2, group_size=2, eval_seeds=(0,))
    s = run_time_to_reward(str(tmp_path), budget=tiny, seeds=[0], settings=dict(steps=4, lora_rank=4, lora_alpha=8))
    assert set(s["methods"]) == set(METHODS) and (tmp_path / "time_to_reward.png").is_file()
    saved = json.loads((tmp_path / "time_to_reward.json").read_text())
    assert (
        saved["methods"]["dense_grpo_window"]["nfe_per_trajectory"]
        < saved["methods"]["dense_grpo"]["nfe_per_trajectory"]
    )
    assert set(saved["targets"]) == {"pretrained + 0.01", "pretrained + 0.02", "pretrained + 0.03", "flow_grpo final"}


def test_runs_in_worker_processes_give_every_method_with_the_schedule_recorded(tmp_path):
    tiny = Budget(train_s=0.01, eval_every_s=0.01, prompts_per_iteration=2, group_size=2, eval_seeds=(0,))
    s = run_time_to_reward(
        str(tmp_path),
        budget=tiny,
        seeds=[0],
        methods=["flow_grpo", "dense_grpo_window"],
        settings=dict(steps=4, lora_rank=4, lora_alpha=8),
        workers=2,
    )
    assert set(s["methods"]) == {"flow_grpo", "dense_grpo_window"}
    assert s["schedule"] == "2 runs at once, each in its own process"
    assert [r["method"] for r in s["runs"]] == ["flow_grpo", "dense_grpo_window"]


def test_a_train_s_override_replaces_the_budget_and_bad_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="train_s must be > 0"):
        run_time_to_reward(str(tmp_path), quick=True, train_s=0)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        run_time_to_reward(str(tmp_path), quick=True, workers=0)
