"""The SDE window (docs/method.md §10): placement, σ outside the window, completions only where needed, exact NFE."""

import pytest
import torch

from densegrpo_core.method.guidance import GuidedVelocity
from densegrpo_core.method.rollout import fused_rollout, ode_complete, predicted_nfe, sde_chain, window_rollout
from densegrpo_core.method.schedule import sd3_scheduler_grid, sde_noise_scales
from densegrpo_core.method.window import (
    completion_indices,
    default_window_range,
    fill_window_rewards,
    needed_reward_columns,
    random_window_start,
    sliding_window_start,
    window_sigmas,
)

B = 3
DENSE_GRPO, DENSE_BASELINE = (0, 1), (1,)


def make_guide(model, cfg=1.0):
    cond = torch.randn(B, 4, generator=torch.Generator().manual_seed(5))
    return GuidedVelocity(model, cond, torch.zeros(B, 4), cfg_scale=cfg)


def setup(T):
    tau = sd3_scheduler_grid(T, 3.0)
    sigmas = sde_noise_scales(torch.full((T,), 0.7), tau)
    x_T = torch.randn(B, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    return tau, sigmas, x_T


def dense_completions(T, start, W, offsets=DENSE_GRPO, trained=None):
    trained = range(start, min(start + W, T if trained is None else trained))
    return completion_indices(needed_reward_columns(trained, offsets, T), start, W)


def test_default_range_is_flow_grpo_fast_half_the_steps_and_mixgrpo_all_but_the_last():
    assert default_window_range(10, 2) == (0, 5)  # Flow-GRPO-Fast: (0, num_steps // 2)
    assert default_window_range(10, 7) == (0, 7)  # widened to hold the window
    assert default_window_range(10, 2, "sliding") == (0, 9)


def test_random_start_stays_in_range_and_depends_only_on_seed_and_iteration():
    starts = [random_window_start(0, 5, 2, seed=1, iteration=i) for i in range(200)]
    assert set(starts) == {0, 1, 2, 3}
    assert starts == [random_window_start(0, 5, 2, seed=1, iteration=i) for i in range(200)]


def test_sliding_start_moves_by_stride_every_n_iterations_and_rolls_back():
    starts = [sliding_window_start(0, 9, 2, it, stride=2, every=3) for it in range(15)]
    assert starts == [0, 0, 0, 2, 2, 2, 4, 4, 4, 6, 6, 6, 0, 0, 0]


def test_steps_outside_the_window_have_no_noise():
    s = torch.arange(1.0, 7.0)
    assert window_sigmas(s, 2, 3).tolist() == [0, 0, 3, 4, 5, 0]


def test_dense_grpo_completes_the_window_start_and_its_interior_only():
    assert dense_completions(10, 3, 2) == [3, 4]  # R_7 (pre-window, x_3) and R_6; R_5 = R_0
    assert dense_completions(10, 0, 1) == [0]


def test_dense_baseline_needs_no_pre_window_completion():
    assert dense_completions(10, 3, 2, DENSE_BASELINE) == [4]


def test_sparse_modes_need_no_completion():
    assert dense_completions(10, 3, 2, ()) == []


def test_a_window_that_trains_nothing_needs_no_completion():
    assert dense_completions(10, 8, 2, trained=8) == []  # train_fraction leaves steps 8, 9 untrained


def test_the_completion_from_the_last_latent_is_free():
    assert predicted_nfe(10, window=(8, 2)) == 10 + 1 + 0  # ODE_1(x_9): its one Euler step uses the chain's v


def test_unneeded_columns_are_filled_from_the_right_and_after_the_window_with_R0():
    known = {2: torch.tensor([1.0]), 3: torch.tensor([2.0])}
    R = fill_window_rewards(known, torch.tensor([5.0]), start=2, size=2, steps=6)
    assert R.tolist() == [[1.0, 1.0, 1.0, 2.0, 5.0, 5.0, 5.0]]


@pytest.mark.parametrize("T,start,W", [(6, 0, 2), (6, 2, 3), (10, 3, 2), (10, 0, 10), (10, 7, 3)])
@pytest.mark.parametrize("ode_steps", [None, 1, 2])
def test_measured_nfe_equals_the_prediction(tiny_velocity, T, start, W, ode_steps):
    tau, sigmas, x_T = setup(T)
    for offsets in (DENSE_GRPO, DENSE_BASELINE, ()):
        comp = dense_completions(T, start, W, offsets)
        ro = window_rollout(make_guide(tiny_velocity, 3.0), x_T, tau, window_sigmas(sigmas, start, W), comp, ode_steps)
        assert ro.nfe_per_trajectory == predicted_nfe(T, ode_steps, window=(start, W), reward_offsets=offsets)


def test_dense_nfe_at_ten_steps_window_two_is_under_half_of_the_full_sweep():
    nfe = [predicted_nfe(10, window=(s, 2)) for s in range(4)]  # Flow-GRPO-Fast's range (0, 5): starts 0-3
    assert nfe == [27, 25, 23, 21] and max(nfe) < predicted_nfe(10) / 2 == 27.5


def test_full_window_with_every_completion_is_the_fused_sweep(tiny_velocity):
    T = 6
    tau, sigmas, x_T = setup(T)
    a = window_rollout(
        make_guide(tiny_velocity), x_T, tau, sigmas, range(T), generator=torch.Generator().manual_seed(1)
    )
    b = fused_rollout(make_guide(tiny_velocity), x_T, tau, sigmas, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.latents, b.latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.ode_endpoints, b.ode_endpoints, atol=1e-5, rtol=0)
    assert a.nfe == b.nfe


@pytest.mark.parametrize("ode_steps", [None, 2])
def test_completions_equal_separate_ode_n_rollouts(tiny_velocity, ode_steps):
    T, start, W = 8, 2, 3
    tau, sigmas, x_T = setup(T)
    comp = dense_completions(T, start, W)
    ro = window_rollout(make_guide(tiny_velocity, 3.0), x_T, tau, window_sigmas(sigmas, start, W), comp, ode_steps)
    rows = torch.arange(B)
    for i, k in enumerate(ro.completed):
        n = None if ode_steps is None else min(ode_steps, T - k)
        separate = ode_complete(make_guide(tiny_velocity, 3.0), ro.latents[:, k], rows, tau, k, n)
        torch.testing.assert_close(ro.ode_endpoints[:, i], separate, atol=1e-5, rtol=0)


def test_only_window_steps_are_stochastic_and_trainable(tiny_velocity):
    T, start, W = 8, 3, 2
    tau, sigmas, x_T = setup(T)
    ro = window_rollout(make_guide(tiny_velocity), x_T, tau, window_sigmas(sigmas, start, W), [])
    assert ro.trainable.tolist() == [k in (3, 4) for k in range(T)]
    assert ro.nfe_per_trajectory == T


def test_after_the_window_the_chain_is_its_own_completion(tiny_velocity):
    T, start, W = 8, 1, 2
    tau, sigmas, x_T = setup(T)
    ro = window_rollout(make_guide(tiny_velocity), x_T, tau, window_sigmas(sigmas, start, W), [start + W])
    torch.testing.assert_close(ro.ode_endpoints[:, 0], ro.latents[:, -1], atol=1e-5, rtol=0)


def test_before_the_window_the_chain_is_the_ode_from_the_noise(tiny_velocity):
    T, start, W = 8, 4, 2
    tau, sigmas, x_T = setup(T)
    ro = window_rollout(make_guide(tiny_velocity), x_T, tau, window_sigmas(sigmas, start, W), [0, start])
    torch.testing.assert_close(ro.ode_endpoints[:, 0], ro.ode_endpoints[:, 1], atol=1e-5, rtol=0)
    plain = sde_chain(make_guide(tiny_velocity), x_T, tau, torch.zeros(T))
    torch.testing.assert_close(ro.latents[:, : start + 1], plain.latents[:, : start + 1], atol=1e-6, rtol=0)
