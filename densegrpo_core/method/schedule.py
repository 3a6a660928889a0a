"""Flow-time grids and the per-step noise level ψ(t) (docs/method.md §1-§2).

Notation map (code → paper):
    tau[k]     τ(t) with t = T - k: grid order, tau[0] = 1 (noise) … tau[T] = 0 (clean)
    psi[k]     ψ(t) for the step t = T - k, i.e. the step tau[k] → tau[k+1]
    sigmas[k]  σ_t, the SDE noise scale of that step
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..util.atomic import atomic_write_json

PSI_FORMAT = "densegrpo.psi/1"
FLOW_GRPO_NOISE_LEVEL = 0.7  # Flow-GRPO's default `a`
GRID_TOLERANCE = 1e-4  # two grids agree when no flow time differs by more (float32 hosts)


GRIDS = ("sd3", "shifted_linspace")  # named flow-time grids; "sd3" is the default everywhere headless
SD3_TRAIN_TIMESTEPS = 1000  # diffusers FlowMatchEulerDiscreteScheduler.num_train_timesteps


def _check_grid_args(steps, shift):
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")


def time_shift(s: torch.Tensor, shift: float) -> torch.Tensor:
    """shift(s) = shift·s / (1 + (shift-1)·s), SD3's resolution shift of a flow time (docs/method.md §1)."""
    return shift * s / (1.0 + (shift - 1.0) * s)


def sd3_scheduler_grid(steps: int, shift: float = 3.0) -> torch.Tensor:
    """The grid Flow-GRPO samples with: diffusers' FlowMatchEulerDiscreteScheduler, = ComfyUI's `normal` for SD3.

    τ(T..1) = shift(linspace(1, s_min, T)), s_min = shift(1/1000), τ(0) = 0 (docs/method.md §1).
    Returns a float32 tensor of T+1 flow times; for T = 10, shift 3 the last step is .0089 → 0.
    """
    _check_grid_args(steps, shift)
    s_min = time_shift(torch.tensor(1.0 / SD3_TRAIN_TIMESTEPS, dtype=torch.float64), shift)
    s = torch.linspace(1.0, float(s_min), steps, dtype=torch.float64)
    tau = torch.cat([time_shift(s, shift), torch.zeros(1, dtype=torch.float64)])
    return tau.to(torch.float32)


def shifted_linspace_grid(steps: int, shift: float = 3.0) -> torch.Tensor:
    """shift(linspace(1, 0, T+1)): a shifted uniform grid whose last step covers shift(1/T) → 0 (docs/method.md §1).

    An option, never the default: for T = 10, shift 3 its last step is .25 → 0. float32 (T+1,).
    """
    _check_grid_args(steps, shift)
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return time_shift(s, shift).to(torch.float32)


def flow_grid(steps: int, shift: float = 3.0, kind: str = "sd3") -> torch.Tensor:
    """The named grid `kind` ("sd3" default, or "shifted_linspace") of T = `steps` steps (docs/method.md §1)."""
    if kind == "sd3":
        return sd3_scheduler_grid(steps, shift)
    if kind == "shifted_linspace":
        return shifted_linspace_grid(steps, shift)
    raise ValueError(f"unknown grid {kind!r}; expected one of {', '.join(GRIDS)} or a list of T+1 flow times")


def format_grid(tau) -> str:
    """A short text of a grid for error messages: `[1, 0.96, …, 0.0089, 0] (10 steps)`."""
    vals = [float(t) for t in tau]
    return "[" + ", ".join(f"{v:.4g}" for v in vals) + f"] ({len(vals) - 1} steps)"


def validate_grid(tau: torch.Tensor, name: str = "tau") -> torch.Tensor:
    """Check a grid of flow times: 1-D, T+1 >= 2 finite values in (0, 1], strictly decreasing, ending at 0."""
    tau = torch.as_tensor(tau, dtype=torch.float32)
    if tau.ndim != 1 or tau.numel() < 2:
        raise ValueError(f"{name} must be a 1-D grid of at least 2 flow times, got shape {tuple(tau.shape)}")
    if not torch.isfinite(tau).all():
        raise ValueError(f"{name} must be finite, got {tau.tolist()}")
    if tau[-1].item() != 0.0:
        raise ValueError(f"{name} must end at 0 (clean image), got last value {tau[-1].item()}")
    if tau[0].item() > 1.0:
        raise ValueError(f"{name} must start at a flow time <= 1, got {tau[0].item()}")
    if not (tau[1:] < tau[:-1]).all():
        raise ValueError(f"{name} must be strictly decreasing, got {tau.tolist()}")
    return tau


def sde_noise_scales(psi: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """σ_t = ψ(t)·sqrt(τ(t) / (1 - τ'(t))), τ' = τ except τ(T-1) where τ(t) = 1 (docs/method.md §2).

    psi: (T,), tau: (T+1,) → sigmas (T,) float32.
    """
    tau = validate_grid(tau)
    psi = torch.as_tensor(psi, dtype=torch.float32)
    if psi.shape != (tau.numel() - 1,):
        raise ValueError(f"psi has {psi.numel()} entries but the grid has {tau.numel() - 1} steps")
    t = tau[:-1].double()  # (T,) start time of each step
    t_safe = torch.where(t >= 1.0, tau[1].double(), t)  # avoid 1/(1-1)
    return (psi.double() * torch.sqrt(t / (1.0 - t_safe))).to(torch.float32)


@dataclass
class Psi:
    """A per-step noise-level vector ψ(t), grid order (entry 0 is the first step, t = T). docs/method.md §2."""

    values: list[float]  # ψ for each of the T steps, non-negative
    tau: list[float] | None = None  # the grid it was made for (T+1 values), if known
    meta: dict[str, Any] = field(default_factory=dict)  # provenance: calibration settings, source

    def __post_init__(self):
        vals = [float(v) for v in self.values]
        if len(vals) == 0:
            raise ValueError("psi must have at least one value")
        bad = [i for i, v in enumerate(vals) if not math.isfinite(v) or v < 0]
        if bad:
            raise ValueError(
                f"psi values must be finite and >= 0; bad entries at steps {bad}: {[vals[i] for i in bad]}"
            )
        self.values = vals
        if self.tau is not None:
            validate_grid(torch.tensor(self.tau), "psi.tau")
            if len(self.tau) != len(vals) + 1:
                raise ValueError(
                    f"psi has {len(vals)} values but its grid tau has {len(self.tau)} points (expected {len(vals) + 1})"
                )
            self.tau = [float(t) for t in self.tau]

    @property
    def steps(self) -> int:
        return len(self.values)

    @classmethod
    def uniform(cls, a: float = FLOW_GRPO_NOISE_LEVEL, steps: int = 10, tau=None) -> "Psi":
        """Flow-GRPO's setting ψ(t) = a for every step (docs/method.md §2)."""
        return cls(
            [float(a)] * steps,
            tau=None if tau is None else [float(t) for t in tau],
            meta={"source": "uniform", "a": float(a)},
        )

    def tensor(self, steps: int | None = None) -> torch.Tensor:
        """ψ as a float32 (T,) tensor, checking it matches a grid of `steps` steps."""
        if steps is not None and steps != self.steps:
            raise ValueError(
                f"psi has {self.steps} values but the sampling grid has {steps} steps; "
                f"calibrate psi for this step count or use a uniform psi"
            )
        return torch.tensor(self.values, dtype=torch.float32)

    def resolve(self, steps: int) -> "Psi":
        """This ψ for a grid of `steps` steps: a uniform ψ (Flow-GRPO's `a`) stretches to any step count,
        any other ψ must already have `steps` values (ValueError otherwise)."""
        if self.meta.get("source") == "uniform" and steps != self.steps:
            return Psi.uniform(self.meta.get("a", self.values[0]), steps)
        self.tensor(steps)
        return self

    def check_grid(self, tau, where: str = "this grid") -> "Psi":
        """ValueError unless this ψ was made for `tau` (within 1e-4) or carries no grid; a uniform ψ fits any
        grid of its step count (docs/method.md §2: a ψ is checked against the grid it is used with)."""
        tau = [float(t) for t in tau]
        self.tensor(len(tau) - 1)
        if self.tau is None or self.meta.get("source") == "uniform":
            return self
        if max(abs(a - b) for a, b in zip(self.tau, tau)) > GRID_TOLERANCE:
            raise ValueError(
                f"psi was calibrated on the grid {format_grid(self.tau)} but is used on {where} "
                f"{format_grid(tau)}; calibrate psi on the grid you train and sample with"
            )
        return self

    def to_dict(self) -> dict:
        return {"format": PSI_FORMAT, "tau": self.tau, "psi": self.values, **self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "Psi":
        if not isinstance(d, dict) or d.get("format") != PSI_FORMAT:
            raise ValueError(
                f"not a psi file: expected format {PSI_FORMAT!r}, "
                f"got {d.get('format') if isinstance(d, dict) else type(d).__name__!r}"
            )
        if "psi" not in d:
            raise ValueError("psi file has no 'psi' list")
        meta = {k: v for k, v in d.items() if k not in ("format", "tau", "psi")}
        return cls(list(d["psi"]), tau=d.get("tau"), meta=meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON atomically (temporary file, then rename)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Psi":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"psi file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"psi file {path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def parse(cls, text: str) -> "Psi":
        """A comma-separated list of values, e.g. '0.7, 0.6, 0.5'."""
        try:
            vals = [float(s) for s in text.replace(";", ",").split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"psi list must be comma-separated numbers, got {text!r}") from None
        return cls(vals, meta={"source": "list"})


def as_psi(psi: "Psi | Sequence[float] | float | torch.Tensor", steps: int) -> Psi:
    """Accept a Psi, a number (uniform) or a sequence, validated against `steps`."""
    if isinstance(psi, Psi):
        out = psi
    elif isinstance(psi, (int, float)):
        out = Psi.uniform(float(psi), steps)
    else:
        out = Psi(torch.as_tensor(psi, dtype=torch.float64).flatten().tolist())
    out.tensor(steps)
    return out
