"""A real diffusers SD3/SD3.5 transformer in the benchmark (arch "diffusers"): its weights from a local pipeline
folder, the bench's stand-in text conditioning, decoder and reward around it.

    python bench/gpu_sd35m.py --diffusers models/stable-diffusion-3.5-medium

`register(folder)` adds the arch to densegrpo_core.app.benchmark; the bench's sizes (hidden size, blocks, context and
pooled features) are read from the transformer's config, the latent side stays the bench's (64 = 512 px).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class BenchSD3Velocity(nn.Module):
    """densegrpo_core.models.families.sd3.SD3Velocity fed with the bench's conditioning keys (context, y)."""

    lora_preset = "diffusers_sd3"  # models.build_pipeline reads these two
    lora_prefix = "transformer."

    def __init__(self, transformer: nn.Module):
        super().__init__()
        from densegrpo_core.models.families.sd3 import SD3Velocity

        self.velocity = SD3Velocity(transformer)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.velocity(x, tau, {"prompt_embeds": cond["context"], "pooled": cond["y"]})


def diffusers_sd3(folder: str):
    """The bench arch builder for the transformer of `folder` (a StableDiffusion3Pipeline folder)."""
    from densegrpo_core.models.diffusers_pipeline import pipeline_kind

    kind, cls = pipeline_kind(folder)
    if kind != "sd3":
        raise ValueError(f"the bench measures SD3/SD3.5 transformers; {folder!r} holds a {cls}")

    def build(config, dit_cfg, dtype):
        from diffusers import SD3Transformer2DModel

        with torch.device("cpu"):
            transformer = SD3Transformer2DModel.from_pretrained(
                folder, subfolder="transformer", dtype=dtype, local_files_only=True
            )
        transformer.to(config.device)
        c = transformer.config
        width = c.num_attention_heads * c.attention_head_dim
        return (
            BenchSD3Velocity(transformer),
            transformer,
            dataclasses.replace(
                dit_cfg,
                width=width,
                depth=c.num_layers,
                heads=c.num_attention_heads,
                patch_size=c.patch_size,
                latent_channels=c.in_channels,
                context_dim=c.joint_attention_dim,
                pooled_dim=c.pooled_projection_dim,
            ),
        )

    return build


def register(folder: str) -> None:
    from densegrpo_core.app.benchmark import register_arch

    register_arch("diffusers", diffusers_sd3(folder))
