"""Health of a run, every iteration: the signals that show a run going wrong before its reward curve does
(docs/method.md §11), and the warnings the metrics, the panel and the Train node's progress text show.

- `zero_spread_groups`: the fraction of prompt groups whose rewards have no spread (every sample of the prompt
  scored the same in every reward column the rollout computed): GRPO gets no signal from them.
- `dR_neg_fraction` (dense modes): per step, the fraction of trajectories whose ΔR_t < 0 — DenseGRPO's symptom
  of a noise level ψ(t) too large for that step ("all samples negative at late steps").
- `clip_frac`, `kl`, `ratio_mean`: the update's PPO statistics (already in the metrics), read against bounds.

Thresholds live in one record (`HEALTH_THRESHOLDS`); each warning names what it saw and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HealthThresholds:
    negative_dR: float = 0.9  # a trained step where at least this fraction of ΔR_t < 0 → "recalibrate ψ"
    zero_spread: float = 0.5  # more than this fraction of prompt groups without reward spread → "no signal"
    kl: float = 0.05  # mean KL to the reference above this (toy and SD3 runs stay near 1e-3) → "KL too high"
    clip_frac: float = 0.8  # more than this fraction of ratios clipped → "updates too large"


HEALTH_THRESHOLDS = HealthThresholds()


def zero_spread_fraction(R: torch.Tensor, groups: torch.Tensor, columns: list[int] | None = None) -> float:
    """Fraction of prompt groups whose rewards R (B, T+1) are identical within the group in every column of
    `columns` (default: every column)."""
    R = R if columns is None else R[:, columns]
    flat = 0
    ids = groups.unique()
    for g in ids:
        rows = R[groups == g]  # (G, columns)
        flat += bool(((rows.max(0).values - rows.min(0).values) <= 1e-12).all())
    return flat / max(len(ids), 1)


def negative_dR_fraction(dR: torch.Tensor) -> list[float]:
    """Per step t, the fraction of trajectories whose ΔR_t < 0; dR (B, T)."""
    return (dR < 0).float().mean(0).tolist()


def health(
    R: torch.Tensor,
    groups: torch.Tensor,
    dR: torch.Tensor | None,
    trained_steps: list[int],
    update: dict,
    columns: list[int] | None = None,
    thresholds: HealthThresholds = HEALTH_THRESHOLDS,
) -> dict:
    """The iteration's health figures and warnings: {"zero_spread_groups", "dR_neg_fraction" (dense modes),
    "warnings": [{"code", "message"}]}. R (B_all, T+1), groups (B_all,), dR (B_all, T) or None, `update`: the
    update's statistics (kl, clip_frac, ratio_mean)."""
    out = {"zero_spread_groups": zero_spread_fraction(R, groups, columns)}
    warnings = []
    if dR is not None:
        neg = negative_dR_fraction(dR)
        out["dR_neg_fraction"] = neg
        bad = [k for k in trained_steps if neg[k] >= thresholds.negative_dR]
        if bad:
            worst = max(bad, key=lambda k: neg[k])
            warnings.append(
                {
                    "code": "recalibrate_psi",
                    "message": f"ΔR < 0 for {neg[worst]:.0%} of samples at step {worst} (trained steps "
                    f"{bad} at ≥ {thresholds.negative_dR:.0%}): ψ(t) is too large there — recalibrate ψ",
                }
            )
    if out["zero_spread_groups"] > thresholds.zero_spread:
        warnings.append(
            {
                "code": "no_signal",
                "message": f"{out['zero_spread_groups']:.0%} of prompt groups scored identical rewards: the "
                "reward gives no signal (check the reward, raise ψ or group_size)",
            }
        )
    if update.get("kl", 0.0) > thresholds.kl:
        warnings.append(
            {
                "code": "kl_high",
                "message": f"KL to the base model {update['kl']:.3g} > {thresholds.kl:g}: the LoRA is drifting "
                "(raise beta, lower lr)",
            }
        )
    if update.get("clip_frac", 0.0) > thresholds.clip_frac:
        warnings.append(
            {
                "code": "clip_high",
                "message": f"{update['clip_frac']:.0%} of ratios clipped: updates are too large (lower lr)",
            }
        )
    out["warnings"] = warnings
    return out
