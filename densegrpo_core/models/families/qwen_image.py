"""Qwen-Image: ComfyUI's `QwenImage` model and diffusers' QwenImagePipeline.

Notation map (diffusers → core, docs/method.md §1), from diffusers pipelines/qwenimage/pipeline_qwenimage.py:
    transformer(pack(x), timestep/1000 = τ, …)     v(x, τ, c) = noise − x0, the core's sign; packed 2×2 latent
                                                   patches (the same packing as FLUX), unpacked to (C, h, w)
    true CFG: v_u + s·(v_c − v_u), then rescaled   the core's CFG v_u + s·(v_c − v_u) (GuidedVelocity), without
    to ‖v_c‖ per token (true_cfg_scale)            the pipeline's norm rescale: ComfyUI's KSampler guides
                                                   Qwen-Image the same plain way
    latents (N, C, 1, h, w) / (1/std) + mean       what the VAE (AutoencoderKLQwenImage, video-shaped: one
                                                   frame) decodes; the core's latents stay (N, C, h, w)
    FlowMatchEulerDiscreteScheduler dynamic shift  exp(μ) at this resolution, as FLUX (flux.flux_shift)

ComfyUI (comfy/ldm/qwen_image/model.py QwenImageTransformer2DModel) uses diffusers' module names, so one target
regex serves both implementations, and ComfyUI's LoRA key map for QwenImage (comfy/lora.py
`model_lora_keys_unet`: `transformer.<diffusers path>` → `diffusion_model.<path>.weight`) accepts the file the
headless trainer writes with `lora_prefix="transformer."` as it is.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .flux import flux_shift, pack_latents, unpack_latents
from .record import DiffusersHooks, Implementation, ModelFamily

QWEN_IMAGE_MAX_SEQUENCE_LENGTH = 512  # QwenImagePipeline.__call__'s default max_sequence_length
QWEN_IMAGE_TRUE_CFG = 4.0  # QwenImagePipeline.__call__'s default true_cfg_scale
QWEN_IMAGE_SHIFT = 1.15  # ComfyUI supported_models.QwenImage sampling_settings["shift"] (ModelSamplingFlux's μ)

# diffusers QwenImageTransformer2DModel._tp_plan names the same Linears; ComfyUI's class has the same paths:
# QwenImageTransformerBlock.attn (Attention: to_q/k/v, to_out.0 (to_out = [Linear, Dropout]), add_q/k/v_proj,
# to_add_out) and img_mlp / txt_mlp (FeedForward.net = [GELU(proj), Dropout, Linear]). The modulations
# (img_mod.1 / txt_mod.1) are left out, as for SD3 and FLUX.
QWEN_IMAGE_TARGETS = (
    r"transformer_blocks\.\d+\.(?:attn\.(?:to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
    r"|(?:img|txt)_mlp\.net\.(?:0\.proj|2))"
)
# Both networks read only the image stream after the last block (norm_out, proj_out): the last block's text-stream
# outputs (the text rows of the joint attention, so its text queries, the text output projection and the text MLP)
# are computed and dropped, so they get no LoRA (as SD3's context_pre_only query); its text keys / values are read.
QWEN_IMAGE_LAST_BLOCK_UNUSED = ("attn.add_q_proj", "attn.to_add_out", "txt_mlp.net.0.proj", "txt_mlp.net.2")


class QwenImageVelocity(nn.Module):
    """VelocityModel over a diffusers QwenImageTransformer2DModel: v = unpack(transformer(pack(x), τ, …)).

    QwenImagePipeline passes timestep / 1000 = τ (the transformer's Timesteps(scale=1000) scales it back), the
    image shape of one frame of (h/2, w/2) patches for the rotary embedding, and the prompt embeddings with their
    mask (None when no token is padding). Qwen-Image has no guidance embedding."""

    def __init__(self, transformer: nn.Module, latent_hw: tuple[int, int]):
        super().__init__()
        if transformer.config.get("guidance_embeds", False):
            raise ValueError(
                "this QwenImageTransformer2DModel has guidance_embeds=True: a guidance-distilled Qwen-Image is not "
                "supported (QwenImagePipeline's Qwen-Image takes true CFG with a negative prompt)"
            )
        self.transformer = transformer
        h, w = latent_hw
        self.img_shape = (1, h // 2, w // 2)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        n, _, h, w = x.shape
        dtype = self.transformer.dtype
        mask = cond["prompt_embeds_mask"].to(x.device)
        v = self.transformer(
            hidden_states=pack_latents(x).to(dtype),
            timestep=tau.to(dtype),
            encoder_hidden_states=cond["prompt_embeds"].to(x.device, dtype),
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,  # as QwenImagePipeline.encode_prompt
            img_shapes=[[self.img_shape]] * n,
            return_dict=False,
        )[0]
        return unpack_latents(v, h, w).float()


class QwenImageDecoder(nn.Module):
    """Decoder: latents (N, C, h, w) → images (N, H, W, 3) in [0, 1] through AutoencoderKLQwenImage, as
    QwenImagePipeline decodes: one frame (N, C, 1, h, w), latents / (1 / latents_std) + latents_mean."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        z = vae.config.z_dim
        self.register_buffer("mean", torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1), persistent=False)
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1), persistent=False
        )

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 4 or latents.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"latents must be (N, {self.mean.shape[1]}, h, w) for this Qwen-Image VAE, got {tuple(latents.shape)}"
            )
        p = next(self.vae.parameters())
        z = latents.to(p.device, p.dtype)[:, :, None]
        z = z / self.inv_std.to(p.device, p.dtype) + self.mean.to(p.device, p.dtype)
        images = self.vae.decode(z, return_dict=False)[0][:, :, 0]  # (N, 3, H, W) in [-1, 1]
        return (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def encode(pipe, prompts: list[str], device, max_sequence_length: int):
    """QwenImagePipeline.encode_prompt: the Qwen2.5-VL last hidden states after the chat template's system prefix,
    zero-padded to the chunk's longest prompt, with their mask (ones where encode_prompt returns None)."""
    embeds, mask = pipe.encode_prompt(prompts, device=device, max_sequence_length=max_sequence_length)
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}


def _shift(sched: dict, latent_hw: tuple[int, int]) -> float:
    """QwenImagePipeline's mu = calculate_shift(packed tokens, …) with the same defaults as FluxPipeline's.
    A `shift_terminal` in the scheduler config (diffusers stretches the sigmas to end there) is not a shift:
    the core's grid ends at its own last step."""
    h, w = latent_hw
    if sched.get("use_dynamic_shifting"):
        return flux_shift((h // 2) * (w // 2), sched)
    return float(sched.get("shift", 1.0))


QWEN_IMAGE = ModelFamily(
    name="qwen_image",
    description="Qwen-Image (MMDiT, Qwen2.5-VL text encoder)",
    # ComfyUI comfy/ldm/qwen_image/model.py QwenImageTransformer2DModel.transformer_blocks
    comfy=Implementation(
        preset="qwen_image",
        targets=QWEN_IMAGE_TARGETS,
        block_lists=("transformer_blocks",),
        last_block_unused=QWEN_IMAGE_LAST_BLOCK_UNUSED,
    ),
    # diffusers models/transformers/transformer_qwenimage.py QwenImageTransformer2DModel: the same module paths
    diffusers=Implementation(
        preset="diffusers_qwen_image",
        targets=QWEN_IMAGE_TARGETS,
        block_lists=("transformer_blocks",),
        last_block_unused=QWEN_IMAGE_LAST_BLOCK_UNUSED,
    ),
    default_shift=QWEN_IMAGE_SHIFT,
    default_cfg=QWEN_IMAGE_TRUE_CFG,
    default_guidance=None,
    uses_cfg=True,
    diffusers_pipelines=("QwenImagePipeline",),
    diffusers_hooks=DiffusersHooks(
        encode=encode,
        velocity=lambda transformer, latent_hw, guidance: QwenImageVelocity(transformer, latent_hw),
        latent_channels=lambda transformer: transformer.config.in_channels // 4,
        latent_patch=lambda transformer: transformer.config.patch_size,  # 2×2 latent patches, packed
        default_latent_size=lambda transformer: 128,  # QwenImagePipeline.default_sample_size
        max_patches=lambda transformer: None,
        shift=_shift,
        max_sequence_length=QWEN_IMAGE_MAX_SEQUENCE_LENGTH,
        decoder=QwenImageDecoder,
    ),
    comfy_models=("QwenImage",),
    comfy_patch="make_blocks_trainable",  # comfy_kitchen's rope kernel (apply_rope1) has no backward
)
