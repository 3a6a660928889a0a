"""The SDE window: where a rollout is stochastic, and which latents need an ODE completion (docs/method.md §10).

Notation map: a window is the grid-index interval [start, end), end = start + W: the steps k with
start <= k < end are SDE steps (σ_k of §2), every other step is an ODE step (σ = 0, no log-probability,
never trained). Latent rewards R (B, T+1) are in grid order as in `advantages.py`: column c is the reward of
the clean latent reached from x_c, column T is R_0 = r(x_0).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

WINDOW_SCHEDULES = ("random", "sliding")  # Flow-GRPO-Fast's random start, MixGRPO's progressive slide


def default_window_range(steps: int, size: int, schedule: str = "random") -> tuple[int, int]:
    """The grid-index range the window [start, start+W) stays in when none is configured (docs/method.md §10).

    "random": Flow-GRPO-Fast's (0, T//2) (its *_fast configs: `sde_window_range = (0, num_steps//2)`),
    widened to (0, W) when W > T//2. "sliding": MixGRPO's (0, T−1), every step but the last.
    """
    if schedule == "sliding":
        return (0, max(steps - 1, size))
    return (0, max(steps // 2, size))


def random_window_start(lo: int, hi: int, size: int, seed: int, iteration: int) -> int:
    """Flow-GRPO-Fast's draw: start uniform in [lo, hi − W], from a generator seeded by (seed, iteration),
    so every rank draws the same start and a resumed run the same sequence (docs/method.md §10)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + iteration) % 2**64)  # any 64-bit seed
    return lo + int(torch.randint(hi - size - lo + 1, (1,), generator=gen))


def sliding_window_start(lo: int, hi: int, size: int, iteration: int, stride: int, every: int) -> int:
    """MixGRPO's progressive schedule: the window starts at lo, moves `stride` steps every `every` iterations,
    and rolls back to lo once it would leave the range (docs/method.md §10). `iteration` counts from 0."""
    positions = (hi - size - lo) // stride + 1  # starts lo, lo+stride, … that keep [start, start+W) in range
    return lo + stride * ((iteration // every) % positions)


def window_sigmas(sigmas: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """σ_k inside the window [start, start+W), 0 outside: ODE steps there (docs/method.md §10). (T,) → (T,)."""
    out = torch.zeros_like(sigmas)
    out[start : start + size] = sigmas[start : start + size]
    return out


def needed_reward_columns(trained: Iterable[int], offsets: Sequence[int], steps: int) -> list[int]:
    """Columns of R that the advantages of the trained steps read: k + o for every trained step k and every
    offset o of the mode's record, plus R_0 (column T) which every mode reports (docs/method.md §10)."""
    return sorted({k + o for k in trained for o in offsets} | {steps})


def completion_indices(columns: Iterable[int], start: int, size: int) -> list[int]:
    """Latents x_k that need an ODE completion, given the R columns wanted (docs/method.md §10):

    - c >= start + W (after the window): the chain is already an ODE from x_c, its own x_0 is the
      completion, so R_c = R_0 and nothing is computed;
    - c <= start (before or at the window's first step): x_c is deterministic, the chain's ODE path; one
      completion from x_start gives R_start, the value of every pre-window column;
    - start < c < start + W: a completion from x_c.
    """
    end = start + size
    return sorted({max(c, start) for c in columns if c < end})


def fill_window_rewards(known: dict[int, torch.Tensor], final: torch.Tensor, start: int, size: int, steps: int):
    """R (B, T+1) from the computed columns `known` {c: (B,)} and R_0 `final` (B,) (docs/method.md §10).

    Columns after the window are R_0; a column not computed takes the value of the first computed column to
    its right, so ΔR = 0 on every step whose rewards were not needed (no trained step reads them). With
    n = t completions the pre-window columns so filled are exact: ODE_t(x_c) = ODE_start(x_start), c <= start.
    """
    cols: list[torch.Tensor | None] = [None] * (steps + 1)
    for c in range(start + size, steps + 1):
        cols[c] = final
    for c, r in known.items():
        cols[c] = r
    for c in range(steps - 1, -1, -1):
        if cols[c] is None:
            cols[c] = cols[c + 1]
    return torch.stack(cols, dim=1)  # (B, T+1)
