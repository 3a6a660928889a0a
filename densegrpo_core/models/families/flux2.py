"""FLUX.2: ComfyUI's `Flux2` model and diffusers' Flux2Pipeline (FLUX.2-dev) and Flux2KleinPipeline (FLUX.2 klein).

Two records, because the two diffusers pipelines guide differently (diffusers 0.42 pipelines/flux2/):
    FLUX2        Flux2Pipeline: Mistral3 text encoder, guidance-distilled: the transformer has a guidance
                 embedding (`guidance_embeds=True`), fed `guidance_scale` (default 4.0); no negative prompt.
    FLUX2_KLEIN  Flux2KleinPipeline: Qwen3 text encoder, transformer without guidance embedding (the pipeline
                 passes guidance=None); true CFG v_u + s·(v_c − v_u) with the negative prompt "" (default s 4.0),
                 except for the step-distilled klein folders (model_index.json `is_distilled: true`): no CFG.
ComfyUI (0.8.0) has one class for both, comfy.model_base.Flux2 (comfy.ldm.flux.model.Flux with the FLUX.2 config,
comfy/model_detection.py): the FLUX2 record covers it; its guidance embedding comes from the conditioning
(FluxGuidance), as for FLUX.1. ComfyUI 0.8.0 detects FLUX.2-dev's widths only (48 heads), not klein's.

Notation map (diffusers → core, docs/method.md §1):
    latents (N, h·w, 128), packed                 (N, 128, h, w): the 32 VAE channels patchified 2×2 and
                                                  batch-normalised (h = H/16), = ComfyUI's Flux2 latent
    transformer(x, timestep=σ, …)                 τ = σ (the transformer multiplies by 1000 itself)
    noise_pred = noise − x0                       v(x, τ, c), the core's sign
    x·sqrt(bn.running_var + eps) + bn.running_mean, unpatchify 2×2, vae.decode    the Decoder
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

from .record import DiffusersHooks, Implementation, ModelFamily

FLUX2_MAX_SEQUENCE_LENGTH = 512  # Flux2Pipeline / Flux2KleinPipeline default max_sequence_length
FLUX2_GUIDANCE = 4.0  # Flux2Pipeline.__call__ default guidance_scale (the guidance embedding)
KLEIN_CFG = 4.0  # Flux2KleinPipeline.__call__ default guidance_scale (true CFG)
FLUX2_SHIFT_STEPS = 50  # the pipelines' default num_inference_steps, at which `flux2_shift` evaluates FLUX.2's μ


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's schedule parameter μ: diffusers pipelines/flux2/pipeline_flux2.py `compute_empirical_mu` (from
    black-forest-labs/flux2 src/flux2/sampling.py; ComfyUI's comfy_extras/nodes_flux.py has the same)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    m_200 = a2 * image_seq_len + b2
    m_10 = a1 * image_seq_len + b1
    a = (m_200 - m_10) / 190.0
    return float(a * num_steps + m_200 - 200.0 * a)


def flux2_shift(scheduler_config: dict, latent_hw: tuple[int, int], num_steps: int = FLUX2_SHIFT_STEPS) -> float:
    """The grid shift of FLUX.2's pipelines at this resolution: they set the scheduler's sigmas linspace(1, 1/T, T)
    with μ = empirical_mu(h·w, T); the scheduler's exponential time shift exp(μ)/(exp(μ) + 1/s − 1) is
    schedule.time_shift(s, exp(μ)), its linear one μ/(μ + 1/s − 1) is time_shift(s, μ). μ depends on the number of
    steps T as well; the loader evaluates it at the pipelines' default T = 50 (for 1024² px: μ = 2.02, ComfyUI's
    Flux2 sampling shift). A scheduler without dynamic shifting ignores μ and shifts by its `shift`."""
    get = scheduler_config.get
    if not get("use_dynamic_shifting"):
        return float(get("shift", 1.0))
    h, w = latent_hw
    mu = empirical_mu(h * w, num_steps)
    kind = get("time_shift_type", "exponential")
    if kind == "exponential":
        return math.exp(mu)
    if kind == "linear":
        return mu
    raise ValueError(f"scheduler_config time_shift_type must be 'exponential' or 'linear', got {kind!r}")


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) → (N, h·w, C): Flux2Pipeline._pack_latents."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w).permute(0, 2, 1)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h·w, C) → (N, C, h, w): Flux2Pipeline._unpack_latents_with_ids for the row-major ids of `latent_ids`."""
    n, _, c = x.shape
    return x.permute(0, 2, 1).reshape(n, c, h, w)


def latent_ids(h: int, w: int) -> torch.Tensor:
    """(h·w, 4) rope coordinates (t, h, w, l) = (0, i, j, 0): Flux2Pipeline._prepare_latent_ids."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))


def text_ids(length: int) -> torch.Tensor:
    """(L, 4) rope coordinates (0, 0, 0, l): Flux2Pipeline._prepare_text_ids."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length))


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    """(N, 4C, h, w) → (N, C, 2h, 2w): Flux2Pipeline._unpatchify_latents."""
    n, c4, h, w = z.shape
    return z.reshape(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, 2 * h, 2 * w)


class Flux2Velocity(nn.Module):
    """VelocityModel over a Flux2Transformer2DModel: v = unpack(transformer(pack(x), τ, guidance, embeds, ids)).

    `guidance` feeds the guidance embedding of a transformer that has one (FLUX.2-dev); klein's has none."""

    def __init__(self, transformer: nn.Module, latent_hw: tuple[int, int], guidance: float | None):
        super().__init__()
        self.transformer, self.guidance = transformer, guidance
        self.register_buffer("img_ids", latent_ids(*latent_hw), persistent=False)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        n, _, h, w = x.shape
        dtype = self.transformer.dtype
        embeds = cond["prompt_embeds"].to(x.device, dtype)  # (N, L, D)
        guidance = None
        if self.transformer.config.guidance_embeds:
            if self.guidance is None:
                raise ValueError("this FLUX.2 transformer has a guidance embedding: give `guidance` (e.g. 4.0)")
            guidance = torch.full((n,), self.guidance, device=x.device, dtype=torch.float32)
        v = self.transformer(
            hidden_states=pack_latents(x).to(dtype),
            timestep=tau.to(x.device, dtype),
            guidance=guidance,
            encoder_hidden_states=embeds,
            txt_ids=text_ids(embeds.shape[1]).to(x.device),
            img_ids=self.img_ids.to(x.device),
            return_dict=False,
        )[0]
        return unpack_latents(v, h, w).float()


class Flux2VAEDecoder(nn.Module):
    """Decoder of AutoencoderKLFlux2: latents (N, 128, h, w) → images (N, 16h, 16w, 3) in [0, 1], as the
    pipelines decode: undo the batch norm with its running statistics, unpatchify 2×2, vae.decode, x/2 + 1/2."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        patch = tuple(vae.config.patch_size)
        if patch != (2, 2):
            raise ValueError(f"AutoencoderKLFlux2 patch_size must be (2, 2) as FLUX.2's pipelines assume, got {patch}")
        self.vae = vae

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        bn = self.vae.bn
        z = latents.to(p.device, p.dtype)
        mean = bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(z.device, z.dtype)
        images = self.vae.decode(unpatchify(z * std + mean), return_dict=False)[0]  # (N, 3, H, W) in [-1, 1]
        return (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def vae_scale(vae) -> int:
    """Pixels per latent pixel: the VAE's downsampling × its 2×2 patchify (Flux2Pipeline.vae_scale_factor · 2)."""
    return 2 ** (len(vae.config.block_out_channels) - 1) * int(vae.config.patch_size[0])


def encode(pipe, prompts: list[str], device, max_sequence_length: int):
    """Both pipelines' own encode_prompt (Mistral3 hidden states 10/20/30, Qwen3's 9/18/27, stacked along the
    width): prompt_embeds (N, max_sequence_length, 3·hidden); the transformer gets no attention mask."""
    embeds, _ = pipe.encode_prompt(prompts, device=device, max_sequence_length=max_sequence_length)
    return {"prompt_embeds": embeds}


# diffusers module → ComfyUI module of the same weight, inverse of diffusers loaders/single_file_utils.py
# `convert_flux2_transformer_checkpoint_to_diffusers` (FLUX2_TRANSFORMER_{DOUBLE,SINGLE}_BLOCK_KEY_MAP) for the
# LoRA targets whose diffusers names ComfyUI's key map lacks: comfy/lora.py `model_lora_keys_unet` maps
# "transformer." + diffusers names onto Flux2 (a comfy.model_base.Flux) with FLUX.1's table,
# comfy/utils.py `flux_to_diffusers`, which has the double blocks' attention (to_q/k/v as slices of the fused
# qkv, add_*_proj, to_out.0, to_add_out) but FLUX.1's MLP and single-block names (ff.net.*, proj_mlp,
# proj_out). Those keep "transformer." + name; these become ComfyUI's own "diffusion_model." + module keys.
COMFY_MODULES = {
    r"transformer_blocks\.(\d+)\.ff\.linear_in": r"double_blocks.\1.img_mlp.0",
    r"transformer_blocks\.(\d+)\.ff\.linear_out": r"double_blocks.\1.img_mlp.2",
    r"transformer_blocks\.(\d+)\.ff_context\.linear_in": r"double_blocks.\1.txt_mlp.0",
    r"transformer_blocks\.(\d+)\.ff_context\.linear_out": r"double_blocks.\1.txt_mlp.2",
    r"single_transformer_blocks\.(\d+)\.attn\.to_qkv_mlp_proj": r"single_blocks.\1.linear1",
    r"single_transformer_blocks\.(\d+)\.attn\.to_out": r"single_blocks.\1.linear2",
}


def comfy_lora_key(name: str) -> str | None:
    """The ComfyUI-format LoRA key base for diffusers module `name`, where "transformer." + name is not one
    ComfyUI maps (COMFY_MODULES); None where it is."""
    for pattern, comfy in COMFY_MODULES.items():
        if re.fullmatch(pattern, name):
            return "diffusion_model." + re.sub(pattern, comfy, name)
    return None


def _klein_cfg(model_index: dict) -> float:
    """Flux2KleinPipeline guides with CFG unless `is_distilled` (do_classifier_free_guidance)."""
    return 1.0 if model_index.get("is_distilled") else KLEIN_CFG


# ComfyUI comfy/ldm/flux/{model,layers}.py with the FLUX.2 config (mlp_silu_act: img/txt_mlp = Sequential(Linear,
# SiLUActivation, Linear), global modulation, no biases): the same module names as FLUX.1, so FLUX.1's preset
COMFY = Implementation(
    preset="flux",
    targets=r"(?:double_blocks\.\d+\.(?:img|txt)_(?:attn\.(?:qkv|proj)|mlp\.[02])|single_blocks\.\d+\.linear[12])",
    block_lists=("double_blocks", "single_blocks"),
)
# diffusers Flux2Transformer2DModel: double-stream attention q/k/v/out and the context's, both SwiGLU feed-forwards
# (Flux2FeedForward linear_in/linear_out), the single-stream blocks' fused qkv+MLP-in and attention+MLP-out
DIFFUSERS = Implementation(
    preset="diffusers_flux2",
    targets=r"(?:transformer_blocks\.\d+\.(?:attn\.(?:to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
    r"|ff(?:_context)?\.linear_(?:in|out))"
    r"|single_transformer_blocks\.\d+\.attn\.(?:to_qkv_mlp_proj|to_out))",
    block_lists=("transformer_blocks", "single_transformer_blocks"),
)


def _hooks(**kw) -> DiffusersHooks:
    return DiffusersHooks(
        encode=encode,
        velocity=lambda transformer, latent_hw, guidance: Flux2Velocity(transformer, latent_hw, guidance),
        latent_channels=lambda transformer: transformer.config.in_channels,  # 128: already patchified
        latent_patch=lambda transformer: transformer.config.patch_size,  # 1
        default_latent_size=lambda transformer: 64,  # the pipelines' 1024 px
        max_patches=lambda transformer: None,
        shift=flux2_shift,
        max_sequence_length=FLUX2_MAX_SEQUENCE_LENGTH,
        decoder=Flux2VAEDecoder,
        vae_scale=vae_scale,
        comfy_lora_key=comfy_lora_key,
        **kw,
    )


FLUX2 = ModelFamily(
    name="flux2",
    description="FLUX.2 (dev)",
    comfy=COMFY,
    diffusers=DIFFUSERS,
    default_shift=math.exp(2.02),  # ComfyUI supported_models.Flux2 sampling shift μ = 2.02 (exp: the core's shift)
    default_cfg=1.0,  # guidance-distilled: the guidance embedding instead of CFG
    default_guidance=FLUX2_GUIDANCE,
    uses_cfg=False,
    diffusers_pipelines=("Flux2Pipeline",),
    diffusers_hooks=_hooks(),
    comfy_models=("Flux2",),
    comfy_patch="make_blocks_trainable",  # in-place residual adds and comfy_kitchen's rope kernel, as FLUX.1
)

FLUX2_KLEIN = ModelFamily(
    name="flux2_klein",
    description="FLUX.2 klein",
    comfy=COMFY,  # the same ComfyUI class (Flux2); ComfyUI 0.8.0 cannot detect klein's widths
    diffusers=DIFFUSERS,
    default_shift=math.exp(2.02),
    default_cfg=KLEIN_CFG,
    default_guidance=None,  # no guidance embedding
    uses_cfg=True,  # negative prompt "" as Flux2KleinPipeline
    diffusers_pipelines=("Flux2KleinPipeline",),
    diffusers_hooks=_hooks(cfg_scale=_klein_cfg),
    comfy_models=(),  # ComfyUI's Flux2 class is the FLUX2 record's
    comfy_patch="make_blocks_trainable",
)
