"""SDE and ODE steps (docs/method.md §3-§4)."""

import math

import torch

from densegrpo_core.method.schedule import Psi, sde_noise_scales, shifted_linspace_grid
from densegrpo_core.method.sde import gaussian_log_prob, ode_step, sde_step, sde_step_mean, sde_step_std


def test_sde_step_with_zero_psi_is_euler():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    step = sde_step(x, v, 0.8, 0.6, 0.0, generator=g)
    assert torch.equal(step.x_next, ode_step(x, v, 0.8, 0.6))
    assert step.std == 0.0 and step.log_prob is None


def test_sde_log_prob_equals_torch_normal():
    g = torch.Generator().manual_seed(1)
    mean, x = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    std = 0.37
    expected = torch.distributions.Normal(mean, std).log_prob(x).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected, rtol=1e-6, atol=1e-6)


def test_sde_step_log_prob_is_float32_for_bf16_inputs():
    x, v = torch.randn(2, 4, dtype=torch.bfloat16), torch.randn(2, 4, dtype=torch.bfloat16)
    step = sde_step(x, v, 0.5, 0.4, 0.7, generator=torch.Generator().manual_seed(0))
    assert step.log_prob.dtype == torch.float32 and step.mean.dtype == torch.float32


def test_sde_samples_match_mean_and_std():
    x = torch.randn(1, 2000, generator=torch.Generator().manual_seed(2)).expand(4000, 2000)
    v = torch.randn(1, 2000, generator=torch.Generator().manual_seed(3)).expand(4000, 2000)
    tau, tau_next, sigma = 0.7, 0.55, 0.9
    g = torch.Generator().manual_seed(4)
    samples = sde_step(x, v, tau, tau_next, sigma, generator=g).x_next  # (4000, 2000)
    mean = sde_step_mean(x[:1], v[:1], tau, tau_next, sigma)[0]
    std = sde_step_std(tau, tau_next, sigma)
    assert std == sigma * math.sqrt(tau - tau_next)
    assert (samples.mean(0) - mean).abs().max() < 5 * std / math.sqrt(4000)
    emp_std = samples.std(0)
    assert (emp_std.mean() - std).abs() < 0.01 * std


def test_sde_mean_matches_flow_grpo_formula():
    x, v = torch.randn(3, 5), torch.randn(3, 5)
    tau, tau_next, s = 0.6, 0.45, 0.5
    dt = tau_next - tau
    expected = x + (v + s**2 / (2 * tau) * (x + (1 - tau) * v)) * dt
    torch.testing.assert_close(sde_step_mean(x, v, tau, tau_next, s), expected)


def test_first_step_at_tau_one_is_finite():
    tau = shifted_linspace_grid(10, shift=3.0)
    sigmas = sde_noise_scales(Psi.uniform(0.7, 10).tensor(), tau)
    assert tau[0] == 1.0 and torch.isfinite(sigmas).all()
    expected = 0.7 * math.sqrt(1.0 / (1.0 - tau[1].item()))
    assert math.isclose(sigmas[0].item(), expected, rel_tol=1e-6)
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    step = sde_step(x, v, 1.0, tau[1].item(), sigmas[0].item(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(step.x_next).all() and torch.isfinite(step.log_prob).all()


def test_noise_scale_formula_inside_grid():
    tau = shifted_linspace_grid(4, shift=1.0)  # 1, .75, .5, .25, 0
    sig = sde_noise_scales(torch.tensor([0.1, 0.2, 0.3, 0.4]), tau)
    assert math.isclose(sig[2].item(), 0.3 * math.sqrt(0.5 / 0.5), rel_tol=1e-6)
    assert math.isclose(sig[3].item(), 0.4 * math.sqrt(0.25 / 0.75), rel_tol=1e-6)
