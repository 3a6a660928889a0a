"""One SDE step with its log-probability, and the Euler ODE step (docs/method.md §3-§4).

Notation map: x = x_t, tau = τ(t), tau_next = τ(t-1), dt = Δτ_t < 0, sigma = σ_t (§2),
v = v(x_t, τ(t), c). Log-probabilities are float32 whatever the model's dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class SDEStep(NamedTuple):
    x_next: torch.Tensor  # (B, ...) x_{t-1}
    mean: torch.Tensor  # (B, ...) float32 mean of p(x_{t-1} | x_t)
    std: float  # scalar std σ_t·sqrt(-Δτ); 0 means a deterministic step
    log_prob: torch.Tensor | None  # (B,) float32, None when std == 0 (no density, never trained)


def ode_step(x: torch.Tensor, v: torch.Tensor, tau: float, tau_next: float) -> torch.Tensor:
    """Euler step x_{t-1} = x_t + v·Δτ_t (docs/method.md §4)."""
    return x + v * (tau_next - tau)


def sde_step_mean(x: torch.Tensor, v: torch.Tensor, tau: float, tau_next: float, sigma: float) -> torch.Tensor:
    """mean = x_t + [v + σ²/(2τ)·(x_t + (1-τ)·v)]·Δτ, computed in float32 (docs/method.md §3)."""
    x, v = x.float(), v.float()
    dt = tau_next - tau
    if sigma == 0.0:
        return x + v * dt
    return x + (v + (sigma**2 / (2.0 * tau)) * (x + (1.0 - tau) * v)) * dt


def sde_step_std(tau: float, tau_next: float, sigma: float) -> float:
    """std = σ_t·sqrt(-Δτ_t) (docs/method.md §3)."""
    return float(sigma) * math.sqrt(tau - tau_next)


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """log p(x_{t-1} | x_t), mean over all latent elements of an isotropic Gaussian, float32 (docs/method.md §3).

    x_next, mean: (B, ...) → (B,).
    """
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    x_next, mean = x_next.float(), mean.float()
    lp = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(dim=1)


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    tau: float,
    tau_next: float,
    sigma: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> SDEStep:
    """Sample x_{t-1} = mean + std·ξ, ξ ~ N(0, I), and return its log-probability (docs/method.md §3).

    With sigma = 0 the step is exactly the Euler ODE step and has no log-probability.
    """
    mean = sde_step_mean(x, v, tau, tau_next, sigma)
    std = sde_step_std(tau, tau_next, sigma)
    if std == 0.0:
        return SDEStep(mean.to(x.dtype), mean, 0.0, None)
    if noise is None:
        # noise is drawn where the generator lives (CPU generators keep runs reproducible across devices)
        gen_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=torch.float32)
        noise = noise.to(mean.device)
    x_next = mean + std * noise.float()
    return SDEStep(x_next.to(x.dtype), mean, std, gaussian_log_prob(x_next, mean, std))
