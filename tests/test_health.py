"""A run's health every iteration (densegrpo_core/training/health.py): each warning trips on a constructed run
built to show its symptom, and stays quiet on a healthy one."""

import torch

from densegrpo_core.training.health import HEALTH_THRESHOLDS, health, negative_dR_fraction, zero_spread_fraction

GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
QUIET = {"kl": 1e-3, "clip_frac": 0.1, "ratio_mean": 1.0}


def codes(h):
    return [w["code"] for w in h["warnings"]]


def spread_rewards(T=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand((8, T + 1), generator=g)


def test_a_healthy_iteration_has_no_warning():
    R = spread_rewards()
    dR = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]] * 4)
    assert health(R, GROUPS, dR, [0, 1], QUIET)["warnings"] == []


def test_a_step_where_nearly_every_dR_is_negative_asks_to_recalibrate_psi():
    R = spread_rewards()
    dR = torch.ones((8, 3))
    dR[:, 1] = -0.1  # every sample loses reward at step 1: ψ too large there
    h = health(R, GROUPS, dR, [0, 1], QUIET)
    assert h["dR_neg_fraction"] == [0.0, 1.0, 0.0]
    assert codes(h) == ["recalibrate_psi"] and "step 1" in h["warnings"][0]["message"]


def test_an_untrained_step_with_negative_dR_raises_nothing():
    dR = torch.ones((8, 3))
    dR[:, 2] = -0.1  # the last step is never trained
    assert health(spread_rewards(), GROUPS, dR, [0, 1], QUIET)["warnings"] == []


def test_groups_without_reward_spread_say_the_reward_gives_no_signal():
    R = spread_rewards()
    R[:4] = 0.5  # group 0 scored identically
    assert zero_spread_fraction(R, GROUPS) == 0.5
    assert codes(health(R, GROUPS, None, [0, 1], QUIET)) == []  # half: at the threshold, not above
    R[4:] = 0.25
    h = health(R, GROUPS, None, [0, 1], QUIET)
    assert h["zero_spread_groups"] == 1.0 and codes(h) == ["no_signal"]


def test_kl_past_its_bound_and_mostly_clipped_ratios_are_flagged():
    h = health(spread_rewards(), GROUPS, None, [0], {"kl": 2 * HEALTH_THRESHOLDS.kl, "clip_frac": 0.95})
    assert codes(h) == ["kl_high", "clip_high"]


def test_negative_dR_fraction_is_per_step():
    assert negative_dR_fraction(torch.tensor([[-1.0, 1.0], [-1.0, -1.0]])) == [1.0, 0.5]


def test_a_toy_run_writes_the_health_of_every_iteration(tmp_path):
    import json

    from densegrpo_core.models.pipeline import load_pipeline
    from densegrpo_core.rewards import get_reward
    from densegrpo_core.training.trainer import TrainConfig, Trainer

    config = TrainConfig(
        out_dir=str(tmp_path), steps=3, iterations=2, prompts_per_iteration=2, group_size=2, eval_every=0, save_every=0
    )
    pipe, prompts, _ = load_pipeline("toy")
    Trainer(config, pipe, get_reward("toy"), prompts).run()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all({"zero_spread_groups", "dR_neg_fraction", "warnings"} <= set(m) for m in lines)
    assert all(len(m["dR_neg_fraction"]) == 3 for m in lines)
