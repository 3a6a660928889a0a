"""The optimizer of the LoRA parameters: AdamW, or 8-bit AdamW where bitsandbytes is installed."""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "adamw8bit")


def build_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW ("adamw", torch) or 8-bit AdamW ("adamw8bit", bitsandbytes: optimizer state in 8 bits, ~4× smaller;
    optional, never required). ImportError saying how to install it when bitsandbytes is missing."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ImportError(
                "optimizer 'adamw8bit' needs the optional package bitsandbytes "
                f"(pip install bitsandbytes; {e}); use optimizer = 'adamw' without it"
            ) from None
        return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
