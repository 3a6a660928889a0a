"""FLUX.1 (dev / schnell): ComfyUI's `Flux` model and diffusers' FluxPipeline."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .record import DiffusersHooks, Implementation, ModelFamily

FLUX_MAX_SEQUENCE_LENGTH = 512  # diffusers FluxPipeline's default
FLUX_GUIDANCE = 3.5  # diffusers FluxPipeline's default guidance_scale (FLUX.1-dev embedding)


def flux_shift(image_seq_len: int, scheduler_config) -> float:
    """The grid shift FluxPipeline uses at this resolution: exp(μ), μ = diffusers' `calculate_shift(image_seq_len,
    base_image_seq_len, max_image_seq_len, base_shift, max_shift)` (pipeline_flux.py). The scheduler's exponential
    time shift exp(μ)/(exp(μ) + 1/s − 1) is exactly schedule.time_shift(s, exp(μ)) (docs/method.md §1)."""
    get = scheduler_config.get
    base_len, max_len = get("base_image_seq_len", 256), get("max_image_seq_len", 4096)
    base_shift, max_shift = get("base_shift", 0.5), get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    mu = image_seq_len * m + (base_shift - m * base_len)
    return math.exp(mu)


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) → (N, h/2·w/2, 4C): FluxPipeline._pack_latents."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h/2·w/2, 4C) → (N, C, h, w): FluxPipeline._unpack_latents."""
    n, _, c4 = x.shape
    return x.view(n, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c4 // 4, h, w)


class FluxVelocity(nn.Module):
    """VelocityModel over a FluxTransformer2DModel: v = unpack(transformer(pack(x), τ, guidance, …)).

    FLUX takes τ itself (FluxPipeline passes timestep / 1000) and, for FLUX.1-dev, the guidance embedding value."""

    def __init__(self, transformer: nn.Module, latent_hw: tuple[int, int], guidance: float):
        super().__init__()
        self.transformer, self.guidance = transformer, guidance
        h, w = latent_hw
        ids = torch.zeros(h // 2, w // 2, 3)  # FluxPipeline._prepare_latent_image_ids
        ids[..., 1] += torch.arange(h // 2)[:, None]
        ids[..., 2] += torch.arange(w // 2)[None, :]
        self.register_buffer("img_ids", ids.reshape(-1, 3), persistent=False)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        n, _, h, w = x.shape
        dtype = self.transformer.dtype
        embeds = cond["prompt_embeds"].to(x.device, dtype)  # (N, L, D)
        guidance = (
            torch.full((n,), self.guidance, device=x.device, dtype=torch.float32)
            if self.transformer.config.guidance_embeds
            else None
        )
        v = self.transformer(
            hidden_states=pack_latents(x).to(dtype),
            timestep=tau.float(),
            guidance=guidance,
            pooled_projections=cond["pooled"].to(x.device, dtype),
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=dtype),
            img_ids=self.img_ids.to(dtype),
            return_dict=False,
        )[0]
        return unpack_latents(v, h, w).float()


def encode(pipe, prompts: list[str], device, max_sequence_length: int):
    embeds, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device, max_sequence_length=max_sequence_length)
    return {"prompt_embeds": embeds, "pooled": pooled}


def _shift(sched: dict, latent_hw: tuple[int, int]) -> float:
    h, w = latent_hw
    if sched.get("use_dynamic_shifting"):
        return flux_shift((h // 2) * (w // 2), sched)
    return float(sched.get("shift", FLUX.default_shift))


FLUX = ModelFamily(
    name="flux",
    description="FLUX.1 (dev / schnell)",
    # ComfyUI comfy/ldm/flux/{model,layers}.py Flux: DoubleStreamBlock img/txt attention and MLP
    # (nn.Sequential: 0 = Linear, 1 = GELU, 2 = Linear) and SingleStreamBlock's two fused linears
    comfy=Implementation(
        preset="flux",
        targets=r"(?:double_blocks\.\d+\.(?:img|txt)_(?:attn\.(?:qkv|proj)|mlp\.[02])|single_blocks\.\d+\.linear[12])",
        block_lists=("double_blocks", "single_blocks"),
    ),
    # diffusers FluxTransformer2DModel: double-stream blocks as SD3's, single-stream blocks' q/k/v and fused MLP/out
    diffusers=Implementation(
        preset="diffusers_flux",
        targets=r"(?:transformer_blocks\.\d+\.(?:attn\.(?:to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
        r"|ff(?:_context)?\.net\.(?:0\.proj|2))"
        r"|single_transformer_blocks\.\d+\.(?:attn\.to_[qkv]|proj_mlp|proj_out))",
        block_lists=("transformer_blocks", "single_transformer_blocks"),
    ),
    default_shift=1.0,  # when the scheduler config has no dynamic shifting and names none
    default_cfg=1.0,  # no classifier-free guidance: the guidance embedding instead
    default_guidance=FLUX_GUIDANCE,
    uses_cfg=False,
    diffusers_pipelines=("FluxPipeline",),
    diffusers_hooks=DiffusersHooks(
        encode=encode,
        velocity=lambda transformer, latent_hw, guidance: FluxVelocity(transformer, latent_hw, guidance),
        latent_channels=lambda transformer: transformer.config.in_channels // 4,
        latent_patch=lambda transformer: transformer.config.patch_size * 2,  # FLUX packs 2×2 latent patches
        default_latent_size=lambda transformer: 128,  # as diffusers
        max_patches=lambda transformer: None,
        shift=_shift,
        max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH,
    ),
    comfy_models=("Flux",),
    comfy_patch="make_blocks_trainable",  # in-place residual adds and comfy_kitchen's rope kernel
)
