"""Fused rollouts and NFE accounting (docs/method.md §4, §9)."""

import pytest
import torch

from densegrpo_core.method.guidance import GuidedVelocity
from densegrpo_core.method.rollout import (
    fused_rollout,
    naive_rollout,
    ode_complete,
    ode_sub_grid,
    predicted_nfe,
    rollout,
    sde_chain,
)
from densegrpo_core.method.schedule import sde_noise_scales, shifted_linspace_grid

T, B = 6, 4


def make_guide(model, cfg=1.0, max_batch=256):
    g = torch.Generator().manual_seed(5)
    cond = torch.randn(B, 4, generator=g)
    return GuidedVelocity(model, cond, torch.zeros(B, 4), cfg_scale=cfg, max_batch=max_batch)


def setup():
    tau = shifted_linspace_grid(T, 3.0)
    sigmas = sde_noise_scales(torch.full((T,), 0.7), tau)
    x_T = torch.randn(B, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    return tau, sigmas, x_T


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_fused_endpoints_equal_separate_ode_rollouts(tiny_velocity, cfg):
    tau, sigmas, x_T = setup()
    guide = make_guide(tiny_velocity, cfg)
    ro = fused_rollout(guide, x_T, tau, sigmas, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(B)
    for k in range(T):
        separate = ode_complete(make_guide(tiny_velocity, cfg), ro.latents[:, k], rows, tau, k)
        torch.testing.assert_close(ro.ode_endpoints[:, k], separate, atol=1e-5, rtol=0)


def test_fused_trajectory_equals_plain_sde_chain(tiny_velocity):
    tau, sigmas, x_T = setup()
    ro = fused_rollout(make_guide(tiny_velocity), x_T, tau, sigmas, generator=torch.Generator().manual_seed(1))
    chain = sde_chain(make_guide(tiny_velocity), x_T, tau, sigmas, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ro.latents, chain.latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(ro.log_probs, chain.log_probs, atol=1e-4, rtol=0)
    assert chain.trainable.all() and chain.nfe_per_trajectory == T


def test_fused_nfe_is_exactly_triangular(tiny_velocity):
    tau, sigmas, x_T = setup()
    ro = fused_rollout(make_guide(tiny_velocity, cfg=3.0), x_T, tau, sigmas)
    assert ro.nfe == B * T * (T + 1) // 2
    assert ro.nfe_per_trajectory == predicted_nfe(T, fused=True) == 21
    assert ro.forward_calls == T


def test_naive_nfe_is_sampling_plus_triangular(tiny_velocity):
    tau, sigmas, x_T = setup()
    ro = naive_rollout(make_guide(tiny_velocity), x_T, tau, sigmas)
    assert ro.nfe_per_trajectory == predicted_nfe(T, fused=False) == T + T * (T + 1) // 2


def test_naive_and_fused_give_the_same_endpoints(tiny_velocity):
    tau, sigmas, x_T = setup()
    a = fused_rollout(make_guide(tiny_velocity), x_T, tau, sigmas, generator=torch.Generator().manual_seed(2))
    b = naive_rollout(make_guide(tiny_velocity), x_T, tau, sigmas, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a.ode_endpoints, b.ode_endpoints, atol=1e-5, rtol=0)


def test_chunking_changes_calls_not_results(tiny_velocity):
    tau, sigmas, x_T = setup()
    a = fused_rollout(make_guide(tiny_velocity, 3.0), x_T, tau, sigmas, generator=torch.Generator().manual_seed(3))
    b = fused_rollout(
        make_guide(tiny_velocity, 3.0, max_batch=6), x_T, tau, sigmas, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(a.ode_endpoints, b.ode_endpoints, atol=1e-5, rtol=0)
    assert b.nfe == a.nfe
    # batch at step k is (k+1)·B rows, doubled by CFG, in chunks of at most 6 rows → 3 latents each
    assert b.forward_calls == sum(-(-(k + 1) * B // 3) for k in range(T))


def test_ode_n_with_fewer_steps_uses_sub_grid(tiny_velocity):
    assert ode_sub_grid(10, 0, 10) == list(range(11))
    assert ode_sub_grid(10, 4, 3) == [4, 6, 8, 10]
    tau, sigmas, x_T = setup()
    ro = rollout(make_guide(tiny_velocity), x_T, tau, sigmas, ode_steps=2)
    assert ro.nfe_per_trajectory == T + sum(min(2, T - k) for k in range(T))


def test_ode_n_must_fit_remaining_steps():
    with pytest.raises(ValueError, match="ODE steps n must be in"):
        ode_sub_grid(10, 8, 3)


def test_last_endpoint_is_one_euler_step_from_x1(tiny_velocity):
    tau, sigmas, x_T = setup()
    ro = fused_rollout(make_guide(tiny_velocity), x_T, tau, sigmas)
    assert ro.reward_latents().shape == (B, T + 1, 2, 6, 6)
    torch.testing.assert_close(ro.reward_latents()[:, -1], ro.latents[:, -1])


def test_zero_psi_steps_are_untrainable(tiny_velocity):
    tau, _, x_T = setup()
    sigmas = sde_noise_scales(torch.tensor([0.7] * (T - 1) + [0.0]), tau)
    ro = fused_rollout(make_guide(tiny_velocity), x_T, tau, sigmas)
    assert ro.trainable.tolist() == [True] * (T - 1) + [False]
    # with the last step deterministic, x_0 equals the last ODE endpoint
    torch.testing.assert_close(ro.latents[:, -1], ro.ode_endpoints[:, -1])


def test_bad_sigmas_are_rejected(tiny_velocity):
    tau, _, x_T = setup()
    with pytest.raises(ValueError, match="sigmas must have one value per step"):
        fused_rollout(make_guide(tiny_velocity), x_T, tau, torch.ones(T - 1))
