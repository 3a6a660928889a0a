"""The guided velocity v(x, τ, c) every sampler in the core calls, with exact NFE counting.

A VelocityModel is any callable `model(x (N, ...), tau (N,), cond) -> v (N, ...)`; `cond` is a tensor
or a dict of tensors whose first dimension is the batch. One NFE is one guided velocity for one latent:
with classifier-free guidance that is two forward rows (one doubled batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

Cond = Any  # torch.Tensor | dict[str, torch.Tensor] | None, batch-first


class VelocityModel(Protocol):
    def __call__(self, x: torch.Tensor, tau: torch.Tensor, cond: Cond) -> torch.Tensor: ...


def cond_take(cond: Cond, rows: torch.Tensor) -> Cond:
    """Select batch rows of a conditioning (tensor, dict of tensors or None)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[rows.to(cond.device)]
    if isinstance(cond, dict):
        return {k: cond_take(v, rows) for k, v in cond.items()}
    raise TypeError(f"cond must be a tensor, a dict of tensors or None, got {type(cond).__name__}")


def cond_cat(a: Cond, b: Cond) -> Cond:
    """Concatenate two conditionings along the batch."""
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b], dim=0)
    return {k: cond_cat(a[k], b[k]) for k in a}


def cond_len(cond: Cond) -> int:
    if isinstance(cond, torch.Tensor):
        return cond.shape[0]
    if isinstance(cond, dict):
        return cond_len(next(iter(cond.values())))
    raise TypeError(f"cond must be a tensor or a dict of tensors, got {type(cond).__name__}")


def velocity_from_denoised(x: torch.Tensor, denoised: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """v = (x - x̂0) / τ for a flow model x = (1-τ)·x0 + τ·ε (docs/method.md §1; ComfyUI's `to_d`).

    x, denoised: (N, ...); tau: (N,) or scalar, > 0.
    """
    tau = torch.as_tensor(tau, dtype=x.dtype, device=x.device)
    return (x - denoised) / tau.reshape(tau.shape + (1,) * (x.ndim - tau.ndim))


def denoised_from_velocity(x: torch.Tensor, v: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """x̂0 = x - τ·v, the clean-image prediction of a velocity (docs/method.md §1)."""
    tau = torch.as_tensor(tau, dtype=x.dtype, device=x.device)
    return x - v * tau.reshape(tau.shape + (1,) * (x.ndim - tau.ndim))


@dataclass
class DenoiserVelocity:
    """A VelocityModel from a denoiser `denoise(x (N, ...), tau (N,), **kwargs) -> x̂0` (e.g. ComfyUI's
    CFG-wrapped model inside a sampler, which already applies guidance and conditioning; `cond` is ignored)."""

    denoise: Callable
    kwargs: dict

    def __call__(self, x: torch.Tensor, tau: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        return velocity_from_denoised(x, self.denoise(x, tau, **self.kwargs), tau)


@dataclass
class GuidedVelocity:
    """Classifier-free-guided velocity for a set of B trajectories, chunked under a batch budget.

    `velocity(x, tau, rows)` evaluates latents x (N, ...) whose conditioning is trajectory `rows` (N,).
    """

    model: Callable  # VelocityModel
    cond: Cond  # (B, ...) conditioning of each trajectory
    uncond: Cond = None  # (B, ...) unconditional conditioning; None disables CFG
    cfg_scale: float = 1.0  # v = v_u + s·(v_c - v_u); 1.0 means a single conditional pass
    max_batch: int = 256  # most rows in one forward call (CFG rows count twice)
    detach_uncond: bool = True  # with autograd on, run the unconditional pass without it (docs/method.md §7)
    nfe: int = 0  # guided velocities evaluated so far (one per latent)
    forward_calls: int = 0  # model forward calls so far (after chunking)

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.cfg_scale != 1.0 and self.uncond is None:
            raise ValueError("cfg_scale != 1 needs an unconditional conditioning (uncond)")

    @property
    def uses_cfg(self) -> bool:
        return self.uncond is not None and self.cfg_scale != 1.0

    def _forward(self, x, tau, rows):
        if not self.uses_cfg:
            self.forward_calls += 1
            return self.model(x, tau, cond_take(self.cond, rows))
        if self.detach_uncond and torch.is_grad_enabled():
            # v = v_u.detach() + s·(v_c - v_u.detach()): the gradient flows through the conditional pass only
            with torch.no_grad():
                v_u = self.model(x, tau, cond_take(self.uncond, rows))
            v_c = self.model(x, tau, cond_take(self.cond, rows))
            self.forward_calls += 2
            return v_u + self.cfg_scale * (v_c - v_u)
        n = x.shape[0]
        cond = cond_cat(cond_take(self.uncond, rows), cond_take(self.cond, rows))
        self.forward_calls += 1
        v = self.model(torch.cat([x, x]), torch.cat([tau, tau]), cond)  # (2N, ...)
        v_u, v_c = v[:n], v[n:]
        return v_u + self.cfg_scale * (v_c - v_u)

    def velocity(self, x: torch.Tensor, tau: float | torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Guided v for latents x (N, ...) at flow time(s) tau, conditioned on trajectories `rows` (N,)."""
        n = x.shape[0]
        tau = torch.as_tensor(tau, dtype=torch.float32, device=x.device)
        tau = tau.expand(n) if tau.ndim == 0 else tau
        chunk = max(1, self.max_batch // (2 if self.uses_cfg else 1))
        out = [self._forward(x[i : i + chunk], tau[i : i + chunk], rows[i : i + chunk]) for i in range(0, n, chunk)]
        self.nfe += n
        return out[0] if len(out) == 1 else torch.cat(out)
