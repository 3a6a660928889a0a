"""Reward models: `(images (B, H, W, 3) float in [0, 1], prompts list[str]) -> tensor (B,)` float32.

`get_reward(spec)` resolves a reward by name ("toy") or as a user callable "package.module:function".
"""
from __future__ import annotations

import importlib
from typing import Callable, Protocol, Sequence

import torch

IMAGE_VALUE_TOLERANCE = 1e-3  # images may leave [0, 1] by this much (rounding)


class RewardModel(Protocol):
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


def check_reward_inputs(images: torch.Tensor, prompts: Sequence[str]) -> None:
    """ValueError naming `images` or `prompts` unless images is (B, H, W, 3) finite in [0, 1] with B prompts."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, H, W, 3) tensor, got {got}")
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise ValueError("images must be finite floating-point values in [0, 1]")
    lo, hi = images.min().item(), images.max().item()
    if lo < -IMAGE_VALUE_TOLERANCE or hi > 1 + IMAGE_VALUE_TOLERANCE:
        raise ValueError(f"images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        got = "a single string" if isinstance(prompts, str) else f"{len(prompts)} prompts"
        raise ValueError(f"prompts must be a list of one prompt per image ({images.shape[0]}), got {got}")


def check_reward_output(scores, batch: int, name: str) -> torch.Tensor:
    scores = torch.as_tensor(scores).float().flatten()
    if scores.numel() != batch:
        raise ValueError(f"reward {name!r} returned {scores.numel()} scores for {batch} images")
    return scores


def load_callable(spec: str) -> Callable:
    """Import `package.module:function`."""
    if ":" not in spec:
        raise ValueError(f"custom reward must be 'module:function', got {spec!r}")
    mod_name, fn_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import reward module {mod_name!r}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: module {mod_name!r} has no callable {fn_name!r}")
    return fn


class CallableReward:
    """Wraps any reward callable with input/output validation."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_reward_inputs(images, prompts)
        return check_reward_output(self.fn(images, list(prompts)), images.shape[0], self.name).to(images.device)


def get_reward(spec: str, path: str | None = None) -> CallableReward:
    """A reward by name (`toy`) or `module:function`."""
    if spec == "toy":
        from ..toy.reward import toy_reward
        return CallableReward(toy_reward, "toy")
    if ":" in spec:
        return CallableReward(load_callable(spec), spec)
    raise ValueError(f"unknown reward {spec!r}; expected 'toy' or a 'module:function' callable")
