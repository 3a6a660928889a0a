"""Exploration-space calibration of ψ(t) (DenseGRPO Algorithm 1, docs/method.md §8).

Each iteration samples N trajectories with the current ψ, counts for every step t how many ΔR_t are
positive and negative, and raises ψ(t) by ε2 where the counts are balanced, lowers it otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .schedule import Psi

CRITERIA = ("literal", "relative")


def sign_counts(dR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """#{ΔR_t > 0} and #{ΔR_t < 0} per step. dR (N, T) → pos (T,), neg (T,) long."""
    return (dR > 0).sum(dim=0), (dR < 0).sum(dim=0)


def is_balanced(
    pos: torch.Tensor, neg: torch.Tensor, n: int, criterion: str = "literal", eps1: float = 2.0, delta: float = 0.1
) -> torch.Tensor:
    """Balance test per step: |pos - neg| < ε1 (literal, Algorithm 1) or |pos - neg| / N < δ (relative)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown balance criterion {criterion!r}; expected one of {CRITERIA}")
    gap = (pos - neg).abs().float()
    return gap < eps1 if criterion == "literal" else gap / n < delta


def calibration_step(
    psi: torch.Tensor, balanced: torch.Tensor, eps2: float = 0.01, clamp: tuple[float, float] = (0.05, 1.5)
) -> torch.Tensor:
    """ψ(t) += ε2 where balanced (explore more), -= ε2 otherwise, kept in the clamp (Algorithm 1)."""
    step = torch.where(balanced, torch.full_like(psi, eps2), torch.full_like(psi, -eps2))
    return (psi + step).clamp(*clamp)


@dataclass
class CalibrationConfig:
    iterations: int = 20  # Algorithm 1 iterations (the paper gives no count)
    eps1: float = 2.0  # literal criterion: balanced if |pos - neg| < ε1
    eps2: float = 0.01  # ψ increment per iteration, on Flow-GRPO's `a` scale
    criterion: str = "literal"  # "literal" (paper) or "relative" (|pos - neg| / N < delta)
    delta: float = 0.1  # relative criterion threshold
    clamp: tuple[float, float] = (0.05, 1.5)  # ψ is kept in this range
    average_last: int = 5  # result = mean updated ψ (psi_next) of the last this-many iterations

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown balance criterion {self.criterion!r}; expected one of {CRITERIA}")
        if not 0 <= self.clamp[0] < self.clamp[1]:
            raise ValueError(f"clamp must be (low, high) with 0 <= low < high, got {self.clamp}")
        if self.eps2 <= 0:
            raise ValueError(f"eps2 must be > 0, got {self.eps2}")
        if self.average_last < 1:
            raise ValueError(f"average_last must be >= 1, got {self.average_last}")


@dataclass
class CalibrationResult:
    psi: Psi  # mean ψ_next over the last iterations (Algorithm 1's output)
    history: list[dict] = field(default_factory=list)  # per iteration: psi (used), pos, neg, balanced, n, psi_next


def calibrate(
    sample_dense_rewards: Callable[[torch.Tensor, int], torch.Tensor],
    psi0: Psi,
    config: CalibrationConfig = CalibrationConfig(),
    on_iteration: Callable[[dict], None] | None = None,
) -> CalibrationResult:
    """Run Algorithm 1. `sample_dense_rewards(psi (T,), iteration) -> ΔR (N, T)` samples with that ψ."""
    psi = psi0.tensor()
    history = []
    for it in range(config.iterations):
        dR = torch.as_tensor(sample_dense_rewards(psi.clone(), it), dtype=torch.float32)
        if dR.ndim != 2 or dR.shape[1] != psi.numel():
            raise ValueError(f"dense rewards must be (N, {psi.numel()}), got shape {tuple(dR.shape)}")
        if not torch.isfinite(dR).all():
            rows = (~torch.isfinite(dR)).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"dense rewards are not finite for samples {rows}")
        pos, neg = sign_counts(dR)
        balanced = is_balanced(pos, neg, dR.shape[0], config.criterion, config.eps1, config.delta)
        psi_next = calibration_step(psi, balanced, config.eps2, config.clamp)
        record = {
            "iteration": it,
            "psi": psi.tolist(),
            "pos": pos.tolist(),
            "neg": neg.tolist(),
            "balanced": balanced.tolist(),
            "n": dR.shape[0],
            "psi_next": psi_next.tolist(),
        }
        history.append(record)
        if on_iteration is not None:
            on_iteration(record)
        psi = psi_next
    # the result is ψ after the update: with average_last = 1 exactly Algorithm 1's output (docs/method.md §8)
    last = torch.tensor([h["psi_next"] for h in history[-config.average_last :]]).mean(dim=0)
    meta = {
        "source": "calibration",
        "initial_psi": psi0.values,
        "calibration": {k: getattr(config, k) for k in config.__dataclass_fields__},
    }
    return CalibrationResult(Psi(last.tolist(), tau=psi0.tau, meta=meta), history)
