"""Reward models: `(images (B, H, W, 3) float in [0, 1], prompts list[str]) -> tensor (B,)` float32.

`get_reward(spec)` resolves a reward by name ("toy") or as a user callable "package.module:function".
"""
from __future__ import annotations

import importlib
from typing import Callable, Protocol, Sequence

import torch


class RewardModel(Protocol):
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


def check_reward_inputs(images: torch.Tensor, prompts: Sequence[str]) -> None:
    """Clear errors for images that are not (B, H, W, 3) in [0, 1] and prompt lists of the wrong length."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, H, W, 3) tensor, got {shape}")
    if not torch.isfinite(images).all() or images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError("images must be finite floats in [0, 1]")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        n = "a string" if isinstance(prompts, str) else len(prompts)
        raise ValueError(f"prompts must be a list with one prompt per image ({images.shape[0]}), got {n}")


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
