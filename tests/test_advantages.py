"""Dense rewards and the four advantage modes on a hand-made R matrix (docs/method.md §5-§6)."""

import math

import pytest
import torch

from densegrpo_core.method.advantages import dense_rewards, group_advantages, group_normalize

# grid order: column 0 = R_T (pure ODE), column T = R_0 (the SDE sample); T = 2
R = torch.tensor([[0.0, 0.2, 0.5], [0.0, 0.4, 0.3], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
GROUPS = torch.tensor([0, 0, 1, 1])
ONE = 0.1 / (0.1 + 1e-4)  # a group of two values 0.1 apart from their mean, std 0.1


def test_dense_rewards_are_gains_between_steps():
    torch.testing.assert_close(dense_rewards(R)[:2], torch.tensor([[0.2, 0.3], [0.4, -0.1]]))


def test_dense_rewards_telescope():
    Rr = torch.randn(7, 11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dense_rewards(Rr).sum(1), Rr[:, -1] - Rr[:, 0], atol=1e-6, rtol=0)


def test_flow_grpo_gives_final_reward_advantage_at_every_step():
    A = group_advantages(R, GROUPS, "flow_grpo")
    torch.testing.assert_close(A, torch.tensor([[ONE, ONE], [-ONE, -ONE], [0.0, 0.0], [0.0, 0.0]]))


def test_dense_grpo_normalizes_each_step_gain():
    A = group_advantages(R, GROUPS, "dense_grpo")
    s1 = 0.2 / (0.2 + 1e-4)
    torch.testing.assert_close(A, torch.tensor([[-ONE, s1], [ONE, -s1], [0.0, 0.0], [0.0, 0.0]]))


def test_dense_baseline_normalizes_next_latent_reward():
    A = group_advantages(R, GROUPS, "dense_baseline")
    torch.testing.assert_close(A, torch.tensor([[-ONE, ONE], [ONE, -ONE], [0.0, 0.0], [0.0, 0.0]]))


def test_coca_splits_final_reward_by_cosine_gain():
    lat = torch.zeros(4, 3, 2)
    lat[0] = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])  # s = 0, 1/√2, 1 → w = (.7071, .2929)
    lat[1] = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # s = 0, 1, 1   → w = (1, 0)
    lat[2] = lat[3] = lat[0]
    A = group_advantages(R, GROUPS, "coca", latents=lat)
    a0 = torch.tensor([2 * 0.5 / math.sqrt(2), 2 * 0.3])  # T·w_0·R_0 of samples 0, 1
    a1 = torch.tensor([2 * 0.5 * (1 - 1 / math.sqrt(2)), 0.0])  # T·w_1·R_0 of samples 0, 1
    d0, d1 = (a0[0] - a0[1]).abs() / 2, (a1[0] - a1[1]).abs() / 2
    e0, e1 = d0 / (d0 + 1e-4), d1 / (d1 + 1e-4)
    torch.testing.assert_close(A, torch.tensor([[e0, e1], [-e0, -e1], [0.0, 0.0], [0.0, 0.0]]))


def test_zero_variance_group_gives_zero_not_nan():
    Rc = torch.full((3, 4), 0.1)
    for mode in ("flow_grpo", "dense_grpo", "dense_baseline"):
        A = group_advantages(Rc, torch.tensor([0, 0, 0]), mode)
        assert torch.equal(A, torch.zeros(3, 3))


def test_global_std_divides_by_batch_std():
    A = group_advantages(R, GROUPS, "flow_grpo", global_std=True)
    sd = torch.tensor([0.5, 0.3, 1.0, 1.0]).std(unbiased=False).item()
    expected = 0.1 / (sd + 1e-4)
    torch.testing.assert_close(A[:, 0], torch.tensor([expected, -expected, 0.0, 0.0]))


def test_advantages_are_clipped():
    Rg = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    A = group_advantages(Rg, torch.tensor([0, 0, 0]), "flow_grpo", clip=1.0)
    assert A.max().item() == 1.0 and A.min().item() > -1.0


def test_unknown_advantage_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown advantage mode 'sparse'"):
        group_advantages(R, GROUPS, "sparse")


def test_group_of_one_is_rejected():
    with pytest.raises(ValueError, match="group size >= 2"):
        group_normalize(torch.randn(3), torch.tensor([0, 0, 1]))


def test_non_finite_rewards_name_the_samples():
    Rn = R.clone()
    Rn[2, 1] = float("nan")
    Rn[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"not finite for samples \[2, 3\]"):
        group_advantages(Rn, GROUPS, "dense_grpo")


def test_prompt_groups_are_keyed_by_text():
    from densegrpo_core.method.advantages import prompt_groups

    assert prompt_groups(["b", "b", "a", "a", "b", "c", "c"]).tolist() == [0, 0, 1, 1, 0, 2, 2]


# ---------------------------------------------------------------- mode records
def test_every_advantage_mode_has_a_record():
    from densegrpo_core.method.advantages import ADVANTAGE_MODE_RECORDS, ADVANTAGE_MODES

    assert tuple(ADVANTAGE_MODE_RECORDS) == ADVANTAGE_MODES
    assert all(r.name == n and r.description for n, r in ADVANTAGE_MODE_RECORDS.items())


def test_the_dense_modes_need_ode_branches():
    from densegrpo_core.method.advantages import ADVANTAGE_MODE_RECORDS

    assert {n for n, r in ADVANTAGE_MODE_RECORDS.items() if r.needs_ode_branches} == {"dense_grpo", "dense_baseline"}


def test_only_coca_needs_latents():
    from densegrpo_core.method.advantages import ADVANTAGE_MODE_RECORDS

    assert {n for n, r in ADVANTAGE_MODE_RECORDS.items() if r.needs_latents} == {"coca"}


def test_an_unknown_mode_name_is_refused_with_the_known_names():
    import pytest

    from densegrpo_core.method.advantages import advantage_mode

    with pytest.raises(ValueError, match="dense_grpo"):
        advantage_mode("nope")


def test_group_advantages_dispatches_through_the_record(monkeypatch):
    import dataclasses

    import torch

    from densegrpo_core.method import advantages

    rec = advantages.ADVANTAGE_MODE_RECORDS["flow_grpo"]
    fake = dataclasses.replace(rec, advantage=lambda R, groups, latents, global_std: torch.full((2, 1), 9.0))
    monkeypatch.setitem(advantages.ADVANTAGE_MODE_RECORDS, "flow_grpo", fake)
    A = advantages.group_advantages(torch.zeros(2, 2), torch.tensor([0, 0]), "flow_grpo", clip=5.0)
    assert A.tolist() == [[5.0], [5.0]]  # the record's function, then the clip


def test_each_record_names_the_latent_rewards_its_advantage_reads():
    from densegrpo_core.method.advantages import ADVANTAGE_MODE_RECORDS

    offsets = {n: r.reward_offsets for n, r in ADVANTAGE_MODE_RECORDS.items()}
    assert offsets == {"flow_grpo": (), "dense_grpo": (0, 1), "dense_baseline": (1,), "coca": ()}
    assert all(bool(r.reward_offsets) == r.needs_ode_branches for r in ADVANTAGE_MODE_RECORDS.values())
