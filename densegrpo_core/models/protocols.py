"""The contracts between the model side and the reward side that both import.

A reward maps images (B, H, W, 3) float in [0, 1] and B prompts to scores (B,) float32 on the images' device;
`check_reward_inputs` is that contract's input half, used by every reward (the built-ins in `rewards/` and the
toy model's own reward), so it lives below both.
"""

from __future__ import annotations

from typing import Sequence

import torch

IMAGE_VALUE_TOLERANCE = 1e-3  # images may leave [0, 1] by this much (rounding)


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
