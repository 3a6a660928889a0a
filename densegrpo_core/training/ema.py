"""Exponential moving average of the LoRA weights (`ema_decay`, `ema_every`): kept as a list of float32 tensors
beside the live parameters, updated as Flow-GRPO's EMAModuleWrapper (flow_grpo/ema.py) updates them, swapped in
for evaluation and export (docs/method.md §7)."""

from __future__ import annotations

import contextlib

import torch


def init_ema(params, decay: float | None) -> list[torch.Tensor] | None:
    """A copy of `params` to average into, or None when `decay` is unset (no EMA)."""
    return [p.detach().clone() for p in params] if decay else None


def ema_decay_at(step: int, decay: float) -> float:
    """Flow-GRPO's warm-up decay after `step` optimizer steps: min((1 + s) / (10 + s), decay)."""
    return min((1 + step) / (10 + step), decay)


def update_ema(ema: list[torch.Tensor] | None, params, decay: float, step: int = 0, every: int = 1) -> None:
    """After `step` optimizer steps (counted after the one just taken, as Flow-GRPO's `global_step`): when
    (step + 1) is a multiple of `every`, ema ← ema + (1 − d)·(p − ema) in place with d = ema_decay_at(step, decay);
    nothing when there is no EMA."""
    if ema is None or (step + 1) % every:
        return
    one_minus = 1 - ema_decay_at(step, decay)
    with torch.no_grad():
        for e, p in zip(ema, params):
            e.add_(one_minus * (p.detach() - e))


@contextlib.contextmanager
def ema_swapped_in(params, ema: list[torch.Tensor] | None):
    """Inside the block `params` hold the EMA weights; the live weights come back after it (also on error)."""
    if ema is None:
        yield
        return
    with torch.no_grad():
        live = [p.detach().clone() for p in params]
        for p, e in zip(params, ema):
            p.copy_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, w in zip(params, live):
                p.copy_(w)
