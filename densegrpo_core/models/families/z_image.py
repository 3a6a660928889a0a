"""Z-Image and Lumina 2 (NextDiT): ComfyUI's `Lumina2` model and diffusers' ZImagePipeline.

ComfyUI builds both Lumina 2 (Gemma2 text encoder, 2304-wide context) and Z-Image (Qwen3, 2560) as one
BaseModel class, `comfy.model_base.Lumina2` over `comfy.ldm.lumina.model.NextDiT` (`comfy.supported_models`
Lumina2 / ZImage differ only in unet_config widths, sampling shift 6 / 3 and text encoder), so one record
covers both on the ComfyUI side. On the diffusers side only ZImagePipeline is covered: Lumina2Pipeline
(Lumina2Transformer2DModel, other module names, Gemma2) is not (see `diffusers_pipelines`).

Notation map (diffusers ZImagePipeline → core, docs/method.md §1):
    scheduler sigma σ, timestep = 1000·σ             τ = σ, the flow time (τ = 1 noise)
    transformer t = (1000 − timestep)/1000 = 1 − τ    the model's own time runs the other way (t = 1 image)
    transformer(x, 1 − τ, caps) = x0 − ε              v = ε − x0 = −transformer(...): the pipeline negates
                                                      it (`noise_pred = -noise_pred`) before the Euler step
    latents (N, C, h, w) ↔ list of (C, 1, h, w)       the transformer takes lists (one frame F = 1)
    caption list of (L_i, D), L_i = tokens of prompt i  cond {"prompt_embeds": (N, L, D) zero-padded,
                                                      "prompt_mask": (N, L) bool}; the wrapper slices row i
                                                      back to its L_i tokens with the mask (as the pipeline
                                                      keeps `prompt_embeds[i][prompt_masks[i]]`)
    pred = pos + s·(pos − neg), guidance_scale s      core CFG v_u + w·(v_c − v_u) with w = 1 + s (so the
                                                      pipeline's default s = 5 is w = 6; s = 0, Z-Image-Turbo's
                                                      setting, is w = 1: no CFG)
The pipeline's other CFG options are followed at their defaults only: cfg_truncation 1.0 (it drops CFG where
1 − σ > cfg_truncation, i.e. never) and cfg_normalization False (no renormalisation of the guided prediction).
ComfyUI's NextDiT takes ComfyUI's σ = τ, computes t = 1 − σ itself and returns −(x0 − ε) = v: its velocity
already has the core's sign (ComfyVelocity needs no adapter).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .flux import flux_shift
from .record import DiffusersHooks, Implementation, ModelFamily

Z_IMAGE_MAX_SEQUENCE_LENGTH = 512  # ZImagePipeline.__call__'s default max_sequence_length
Z_IMAGE_GUIDANCE_SCALE = 5.0  # ZImagePipeline.__call__'s default guidance_scale (s in pos + s·(pos − neg))
Z_IMAGE_SHIFT = 3.0  # comfy.supported_models.ZImage sampling_settings and Z-Image's scheduler_config.json


class ZImageVelocity(nn.Module):
    """VelocityModel over a ZImageTransformer2DModel: v = −transformer([x_i (C, 1, h, w)], 1 − τ, [caption_i]).

    Each row's caption is its own variable-length (L_i, D) tensor, as ZImagePipeline passes it (the transformer
    pads the batch itself, with attention masks): `prompt_embeds` (N, L, D) zero-padded by PromptCache is sliced
    back to L_i tokens with `prompt_mask` (N, L)."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        config = transformer.config
        self.patch_size, self.f_patch_size = config.all_patch_size[0], config.all_f_patch_size[0]

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        dtype = self.transformer.dtype
        embeds = cond["prompt_embeds"].to(x.device, dtype)  # (N, L, D)
        mask = cond["prompt_mask"].to(x.device, torch.bool)  # (N, L)
        caps = [e[m] for e, m in zip(embeds, mask)]
        out = self.transformer(
            list(x.to(dtype).unsqueeze(2).unbind(0)),  # N × (C, F=1, h, w)
            1.0 - tau.float(),  # ZImagePipeline: timestep = (1000 − 1000·σ) / 1000
            caps,
            patch_size=self.patch_size,
            f_patch_size=self.f_patch_size,
            return_dict=False,
        )[0]
        return -torch.stack(out).squeeze(2).float()  # the model predicts x0 − ε; the core's v = ε − x0


def encode(pipe, prompts: list[str], device, max_sequence_length: int):
    """ZImagePipeline.encode_prompt (chat template, Qwen3 hidden_states[-2], padding dropped per prompt) as one
    zero-padded (N, L, D) tensor and the (N, L) mask of each prompt's own tokens."""
    caps, _ = pipe.encode_prompt(
        list(prompts),  # _encode_prompt writes the chat-templated text into the list it is given
        device=device,
        do_classifier_free_guidance=False,
        max_sequence_length=max_sequence_length,
    )
    longest = max(c.shape[0] for c in caps)
    embeds = caps[0].new_zeros(len(caps), longest, caps[0].shape[1])
    mask = torch.zeros(len(caps), longest, dtype=torch.bool, device=caps[0].device)
    for i, c in enumerate(caps):
        embeds[i, : c.shape[0]] = c
        mask[i, : c.shape[0]] = True
    return {"prompt_embeds": embeds, "prompt_mask": mask}


def _shift(sched: dict, latent_hw: tuple[int, int]) -> float:
    """ZImagePipeline passes mu = calculate_shift(image_seq_len) to the scheduler, which uses it only with
    `use_dynamic_shifting` (Z-Image-Turbo's scheduler has it off and shift 3.0)."""
    h, w = latent_hw
    if sched.get("use_dynamic_shifting"):
        return flux_shift((h // 2) * (w // 2), sched)
    return float(sched.get("shift", Z_IMAGE_SHIFT))


def _patch(transformer) -> int:
    config = transformer.config
    if len(config.all_patch_size) != 1 or tuple(config.all_f_patch_size) != (1,):
        raise ValueError(
            f"ZImageTransformer2DModel with all_patch_size {list(config.all_patch_size)} and all_f_patch_size "
            f"{list(config.all_f_patch_size)}: expected one image patch size with frame patch 1 (Z-Image: [2], [1])"
        )
    return config.all_patch_size[0]


Z_IMAGE = ModelFamily(
    name="z_image",
    description="Z-Image / Lumina 2 (NextDiT)",
    # ComfyUI comfy/ldm/lumina/model.py NextDiT: JointTransformerBlock in `layers`, `noise_refiner` (image
    # tokens) and `context_refiner` (caption tokens); JointAttention's fused q/k/v `qkv` and `out`, the SwiGLU
    # FeedForward w1/w2/w3. adaLN modulation, embedders and the final layer are not adapted (as for FLUX)
    comfy=Implementation(
        preset="nextdit",
        targets=r"(?:layers|noise_refiner|context_refiner)\.\d+\.(?:attention\.(?:qkv|out)|feed_forward\.w[123])",
        block_lists=("layers", "noise_refiner", "context_refiner"),
    ),
    # diffusers ZImageTransformer2DModel (transformer_z_image.py): the same blocks with separate to_q/to_k/to_v
    # and to_out.0. These are the names comfy.utils.z_image_to_diffusers maps (comfy/lora.py, Lumina2 branch:
    # `transformer.layers.N.attention.to_q` → slice (0, 0, dim) of `layers.N.attention.qkv`, …), so the
    # trainer's "transformer."-prefixed file loads in ComfyUI as it is
    diffusers=Implementation(
        preset="diffusers_z_image",
        targets=r"(?:layers|noise_refiner|context_refiner)\.\d+\.(?:attention\.(?:to_[qkv]|to_out\.0)"
        r"|feed_forward\.w[123])",
        block_lists=("layers", "noise_refiner", "context_refiner"),
    ),
    default_shift=Z_IMAGE_SHIFT,
    default_cfg=1.0 + Z_IMAGE_GUIDANCE_SCALE,  # ZImagePipeline's default guidance_scale 5 (Turbo: pass cfg 1)
    default_guidance=None,
    uses_cfg=True,
    diffusers_pipelines=("ZImagePipeline",),
    diffusers_hooks=DiffusersHooks(
        encode=encode,
        velocity=lambda transformer, latent_hw, guidance: ZImageVelocity(transformer),
        latent_channels=lambda transformer: transformer.config.in_channels,
        latent_patch=_patch,
        default_latent_size=lambda transformer: 128,  # ZImagePipeline: 1024 px, VAE scale 8
        max_patches=lambda transformer: min(transformer.config.axes_lens[1:]),  # its RoPE tables' length
        shift=_shift,
        max_sequence_length=Z_IMAGE_MAX_SEQUENCE_LENGTH,
    ),
    # comfy.supported_models.Lumina2 and ZImage both build comfy.model_base.Lumina2
    comfy_models=("Lumina2",),
    comfy_patch="make_blocks_trainable",  # comfy_kitchen's rope kernel (comfy.ldm.flux.math.apply_rope)
)
