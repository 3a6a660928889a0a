"""Exponential moving average of the LoRA weights (`ema_decay`): kept as a list of float32 tensors beside the
live parameters, updated after each optimizer step, swapped in for evaluation and export."""

from __future__ import annotations

import contextlib

import torch


def init_ema(params, decay: float | None) -> list[torch.Tensor] | None:
    """A copy of `params` to average into, or None when `decay` is unset (no EMA)."""
    return [p.detach().clone() for p in params] if decay else None


def update_ema(ema: list[torch.Tensor] | None, params, decay: float) -> None:
    """ema ← ema + (1 - decay)·(p - ema), in place; nothing when there is no EMA."""
    if ema is None:
        return
    with torch.no_grad():
        for e, p in zip(ema, params):
            e.lerp_(p.detach(), 1 - decay)


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
