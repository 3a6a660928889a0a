"""Chroma (Chroma1-HD / Chroma1-Base, a FLUX.1-schnell derivative): ComfyUI's `Chroma` model and diffusers'
ChromaPipeline.

Chroma keeps FLUX's double/single-stream blocks and 2×2 latent packing but drops their modulation layers (one
"approximator" MLP computes every block's shift/scale/gate from τ), has no pooled CLIP vector and no guidance
embedding (diffusers feeds the approximator a guidance of 0; ComfyUI's `model_base.Chroma.extra_conds` a default
0), and is guided with true classifier-free guidance and a negative prompt.

Notation map (diffusers ChromaPipeline → core, docs/method.md §1):
    sigma, transformer(pack(x), timestep = sigma, …)   τ; the transformer scales τ by 1000 itself
    noise_pred = noise − x0 (FlowMatchEulerDiscrete)    v, the velocity with the core's sign
    neg + guidance_scale·(pos − neg)                    the core's CFG with the negative prompt's conditioning
    text mask: real tokens and the first pad token      cond["attention_mask"] (N, L); the pipeline appends ones
                                                        for the image tokens (`_prepare_attention_mask`)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .flux import flux_shift, pack_latents, unpack_latents
from .record import DiffusersHooks, Implementation, ModelFamily

CHROMA_MAX_SEQUENCE_LENGTH = 512  # diffusers ChromaPipeline's default (T5 tokens, padded to this length)
CHROMA_CFG = 5.0  # diffusers ChromaPipeline's default guidance_scale (true CFG: > 1 runs the negative prompt)


class ChromaVelocity(nn.Module):
    """VelocityModel over a ChromaTransformer2DModel: v = unpack(transformer(pack(x), τ, T5 embeds, mask)).

    As ChromaPipeline.__call__ runs its transformer: timestep τ (= t / 1000), txt_ids zeros, FLUX's image ids,
    and the text attention mask extended with ones over the image tokens."""

    def __init__(self, transformer: nn.Module, latent_hw: tuple[int, int]):
        super().__init__()
        self.transformer = transformer
        h, w = latent_hw
        ids = torch.zeros(h // 2, w // 2, 3)  # ChromaPipeline._prepare_latent_image_ids (as FLUX)
        ids[..., 1] += torch.arange(h // 2)[:, None]
        ids[..., 2] += torch.arange(w // 2)[None, :]
        self.register_buffer("img_ids", ids.reshape(-1, 3), persistent=False)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        n, _, h, w = x.shape
        dtype = self.transformer.dtype
        embeds = cond["prompt_embeds"].to(x.device, dtype)  # (N, L, D)
        mask = cond["attention_mask"].to(x.device, dtype)  # (N, L)
        image_tokens = (h // 2) * (w // 2)
        # ChromaPipeline._prepare_attention_mask: the text mask, then ones (bool) for the image tokens
        mask = torch.cat([mask, torch.ones(n, image_tokens, device=x.device, dtype=torch.bool)], dim=1)
        v = self.transformer(
            hidden_states=pack_latents(x).to(dtype),
            timestep=tau.to(dtype),
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=dtype),
            img_ids=self.img_ids.to(dtype),
            attention_mask=mask,
            return_dict=False,
        )[0]
        return unpack_latents(v, h, w).float()


def encode(pipe, prompts: list[str], device, max_sequence_length: int):
    """T5 embeddings (N, L, D) and Chroma's text mask (N, L): ChromaPipeline.encode_prompt without CFG (the
    negative prompt is encoded as one more prompt, by the loader)."""
    embeds, _, mask, _, _, _ = pipe.encode_prompt(
        prompts, device=device, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length
    )
    return {"prompt_embeds": embeds, "attention_mask": mask}


def _shift(sched: dict, latent_hw: tuple[int, int]) -> float:
    """ChromaPipeline computes FLUX's μ for the packed image sequence and the scheduler uses it when its config
    enables dynamic shifting (Chroma1-HD's does); otherwise the scheduler's own `shift`."""
    h, w = latent_hw
    if sched.get("use_dynamic_shifting"):
        return flux_shift((h // 2) * (w // 2), sched)
    return float(sched.get("shift", CHROMA.default_shift))


CHROMA = ModelFamily(
    name="chroma",
    description="Chroma (FLUX-style, approximator modulation, true CFG)",
    # ComfyUI comfy/ldm/chroma/model.py Chroma: FLUX's DoubleStreamBlock / SingleStreamBlock from
    # comfy/ldm/flux/layers.py built with modulation=False — the same attention/MLP Linears as FLUX's
    # (img/txt attn.qkv and .proj, mlp.0 / mlp.2; the single blocks' fused linear1 / linear2)
    comfy=Implementation(
        preset="chroma",
        targets=r"(?:double_blocks\.\d+\.(?:img|txt)_(?:attn\.(?:qkv|proj)|mlp\.[02])|single_blocks\.\d+\.linear[12])",
        block_lists=("double_blocks", "single_blocks"),
    ),
    # diffusers ChromaTransformer2DModel: ChromaTransformerBlock / ChromaSingleTransformerBlock carry FLUX's
    # attention and feed-forward Linears under FLUX's names. ComfyUI's comfy/lora.py maps these `transformer.`
    # keys onto Chroma too: model_base.Chroma subclasses model_base.Flux, so its `isinstance(model, Flux)` branch
    # applies comfy.utils.flux_to_diffusers to Chroma's unet_config (depth, depth_single_blocks, hidden_size),
    # with q/k/v (and the single blocks' proj_mlp) as slices of the fused qkv / linear1 weights
    diffusers=Implementation(
        preset="diffusers_chroma",
        targets=r"(?:transformer_blocks\.\d+\.(?:attn\.(?:to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
        r"|ff(?:_context)?\.net\.(?:0\.proj|2))"
        r"|single_transformer_blocks\.\d+\.(?:attn\.to_[qkv]|proj_mlp|proj_out))",
        block_lists=("transformer_blocks", "single_transformer_blocks"),
    ),
    default_shift=1.0,  # FlowMatchEulerDiscreteScheduler's default, when the config has no dynamic shifting
    default_cfg=CHROMA_CFG,
    default_guidance=None,  # no guidance embedding: the approximator's guidance input is always 0
    uses_cfg=True,
    diffusers_pipelines=("ChromaPipeline",),
    diffusers_hooks=DiffusersHooks(
        encode=encode,
        velocity=lambda transformer, latent_hw, guidance: ChromaVelocity(transformer, latent_hw),
        latent_channels=lambda transformer: transformer.config.in_channels // 4,
        latent_patch=lambda transformer: transformer.config.patch_size * 2,  # packs 2×2 latent patches
        default_latent_size=lambda transformer: 128,  # ChromaPipeline.default_sample_size
        max_patches=lambda transformer: None,
        shift=_shift,
        max_sequence_length=CHROMA_MAX_SEQUENCE_LENGTH,
    ),
    comfy_models=("Chroma",),
    comfy_patch="make_blocks_trainable",  # FLUX's blocks: in-place residual adds and comfy_kitchen's rope kernel
)
