"""The reward protocol and what every reward shares: input checks, batching, device and dtype choice.

A reward maps images (B, H, W, 3) float in [0, 1] and B prompts to scores (B,) float32 on the images' device.
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol, Sequence

import torch

from ..models.protocols import check_reward_inputs
from .calls import check_scores

DEFAULT_BATCH_SIZE = 32  # images per forward pass of a reward model


class RewardModel(Protocol):
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


def check_reward_output(scores, batch: int, name: str) -> torch.Tensor:
    """(batch,) float32 of one finite score per image, or RewardOutputError naming the reward (calls.py)."""
    return check_scores(scores, batch, name)


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


class BatchedReward:
    """A reward model scored `batch_size` images at a time on its own device; → (B,) float32 on the images' device.

    Subclasses implement `score_batch(images (b, H, W, 3) on self.device, prompts) -> (b,)`.
    """

    name = "reward"

    def __init__(self, device: torch.device, batch_size: int = DEFAULT_BATCH_SIZE):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.batch_size = device, int(batch_size)

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_reward_inputs(images, prompts)
        prompts = list(prompts)
        with torch.autocast(self.device.type, enabled=False):  # the model's own dtype, whatever the caller runs
            out = [
                self.score_batch(
                    images[i : i + self.batch_size].to(self.device).float(), prompts[i : i + self.batch_size]
                )
                .float()
                .flatten()
                .to(images.device)
                for i in range(0, images.shape[0], self.batch_size)
            ]
        return torch.cat(out) if out else torch.zeros(0, device=images.device)


def resolve_device(device=None) -> torch.device:
    """The reward model's device: as given, else CUDA when available, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """Weights dtype: as given, else float16 on CUDA and float32 elsewhere."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower().removeprefix("torch.") not in _DTYPES:
        raise ValueError(f"reward dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[str(dtype).lower().removeprefix("torch.")]
