"""Stable Diffusion 3 / 3.5 (MMDiT): ComfyUI's `SD3` model and diffusers' StableDiffusion3Pipeline."""

from __future__ import annotations

import torch
import torch.nn as nn

from .record import DiffusersHooks, Implementation, ModelFamily

SD3_MAX_SEQUENCE_LENGTH = 128  # T5 tokens per prompt, as Flow-GRPO encodes for SD3 (diffusers default 256)


class SD3Velocity(nn.Module):
    """VelocityModel over an SD3Transformer2DModel: v = transformer(x, 1000·τ, prompt_embeds, pooled)."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        dtype = self.transformer.dtype
        v = self.transformer(
            hidden_states=x.to(dtype),
            timestep=tau.float() * 1000,  # (N, C, h, w)
            encoder_hidden_states=cond["prompt_embeds"].to(x.device, dtype),
            pooled_projections=cond["pooled"].to(x.device, dtype),
            return_dict=False,
        )[0]
        return v.float()


def encode(pipe, prompts: list[str], device, max_sequence_length: int):
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts,
        prompts,
        prompts,
        device=device,
        do_classifier_free_guidance=False,
        max_sequence_length=max_sequence_length,
    )
    return {"prompt_embeds": embeds, "pooled": pooled}


# every Linear of the attention (incl. SD3.5's attn2) and the feed-forwards: the targets before Flow-GRPO's reference
# preset, for `lora_targets` (a regex) when a wider LoRA is wanted
MMDIT_ALL_LINEARS = r"joint_blocks\.\d+\.(?:x_block|context_block)\.(?:attn2?\.(?:qkv|proj)|mlp\.fc[12])"
DIFFUSERS_SD3_ALL_LINEARS = (
    r"transformer_blocks\.\d+\.(?:attn\.(?:to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
    r"|attn2\.(?:to_[qkv]|to_out\.0)|ff(?:_context)?\.net\.(?:0\.proj|2))"
)


SD3 = ModelFamily(
    name="sd3",
    description="Stable Diffusion 3 / 3.5 (MMDiT)",
    # Flow-GRPO's SD3 LoRA (scripts/train_sd3.py target_modules): the joint attention's projections only, not
    # SD3.5's second attention (attn2), not the feed-forwards (docs/method.md §7). Wider: a regex, e.g.
    # MMDIT_ALL_LINEARS / DIFFUSERS_SD3_ALL_LINEARS below.
    # ComfyUI comfy/ldm/modules/diffusionmodules/mmdit.py MMDiT (SD3/SD3.5): JointBlock → DismantledBlock; ComfyUI
    # fuses q/k/v into one `qkv` Linear (one LoRA of r·(d + 3d) where diffusers has three of r·2d); the last
    # context_block (pre_only) has only attn.qkv
    comfy=Implementation(
        preset="mmdit",
        targets=r"joint_blocks\.\d+\.(?:x_block|context_block)\.attn\.(?:qkv|proj)",
        block_lists=("joint_blocks",),
    ),
    # diffusers SD3Transformer2DModel (SD3/SD3.5): attn.{to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,
    # to_add_out}. The last block's context query is dropped by `lora._discarded_outputs` (context_pre_only: its
    # output is never used)
    diffusers=Implementation(
        preset="diffusers_sd3",
        targets=r"transformer_blocks\.\d+\.attn\.(?:to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)",
        block_lists=("transformer_blocks",),
    ),
    default_shift=3.0,  # when the scheduler config names none
    default_cfg=4.5,
    default_guidance=None,
    uses_cfg=True,
    diffusers_pipelines=("StableDiffusion3Pipeline",),
    diffusers_hooks=DiffusersHooks(
        encode=encode,
        velocity=lambda transformer, latent_hw, guidance: SD3Velocity(transformer),
        latent_channels=lambda transformer: transformer.config.in_channels,
        latent_patch=lambda transformer: transformer.config.patch_size,
        default_latent_size=lambda transformer: transformer.config.get("sample_size", 128),
        max_patches=lambda transformer: transformer.config.get("pos_embed_max_size"),
        shift=lambda sched, latent_hw: float(sched.get("shift", SD3.default_shift)),
        max_sequence_length=SD3_MAX_SEQUENCE_LENGTH,
    ),
    comfy_models=("SD3",),
    comfy_patch=None,  # ComfyUI's MMDiT trains under autograd as it is
)
