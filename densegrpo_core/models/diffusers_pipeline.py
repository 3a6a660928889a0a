"""A diffusers pipeline folder of any family (SD3/SD3.5, FLUX.1/.2, Chroma, Qwen-Image, Z-Image) as the core's
FlowPipeline (VelocityModel, Decoder, prompt encoder).

No formula of the method lives here: this module only adapts diffusers' objects to the three protocols of
docs/architecture.md, so the SDE/ODE/rollout/objective code of the core runs on them unchanged.

Notation map (diffusers → core, docs/method.md §1):
    sigma (scheduler), timestep = 1000·sigma     τ, the flow time (τ = 1 noise)
    SD3 transformer(x, 1000·τ, …) = noise − x0   v(x, τ, c), the velocity with the core's sign
    FLUX transformer(pack(x), τ, guidance, …)     v, packed 2×2 → unpacked to (C, h, w)
    FLUX.2: see families/flux2.py                 (128, H/16, W/16) batch-normalised latents
    latents / scaling_factor + shift_factor       what the VAE decodes; images (N, H, W, 3) in [0, 1]

diffusers is imported inside the functions that load a model: `import densegrpo_core` stays light. Every
`from_pretrained` passes `local_files_only=True`: nothing is downloaded.
"""

from __future__ import annotations

import gc
import json
import os
from typing import Sequence

import torch
import torch.nn as nn

from .families import FAMILIES, ModelFamily, family_for_diffusers_pipeline
from .lora import LoraKeys

# model_index.json _class_name → family name, for the pipeline classes the families cover
PIPELINE_KINDS = {cls: f.name for f in FAMILIES.values() for cls in f.diffusers_pipelines}
LORA_PREFIX = "transformer."  # diffusers' key prefix, which ComfyUI's SD3/FLUX LoRA key maps accept
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_diffusers_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "model_index.json"))


def pipeline_kind(folder: str) -> tuple[str, str]:
    """(family name, pipeline class name) from the folder's model_index.json; ValueError naming what is wrong
    (for a pipeline class no family covers: the known families, `families.family_for_diffusers_pipeline`)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder!r} does not exist")
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        raise ValueError(
            f"{folder!r} is not a diffusers pipeline folder (no model_index.json); expected a folder "
            f"written by save_pretrained, e.g. stabilityai/stable-diffusion-3.5-medium"
        )
    cls = _model_index(folder).get("_class_name")
    try:
        family = family_for_diffusers_pipeline(cls)
    except ValueError as e:
        raise ValueError(f"{index}: {e}") from None
    return family.name, cls


# ------------------------------------------------------------------------------------------- protocols
class VAEDecoder(nn.Module):
    """Decoder: latents (N, C, h, w) → images (N, H, W, 3) in [0, 1], undoing the VAE's scaling and shift."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(vae.config.get("shift_factor", None) or 0.0)

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        z = latents.to(p.device, p.dtype) / self.scaling + self.shift
        images = self.vae.decode(z, return_dict=False)[0]  # (N, 3, H, W) in [-1, 1]
        return (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


class PromptCache:
    """Prompt conditionings encoded once at load time (the text encoders are freed after): encode(prompts) and
    null_cond(n) look them up. Stored on the CPU in the model dtype; batches move to the device in `guide`.

    Each entry is {cond key: per-prompt tensor}. Token sequences whose length differs between prompts (and
    their masks) are zero-padded once, here, to the longest of all entries, so any batch — conditional and
    unconditional rows together — stacks along the batch dimension."""

    def __init__(self, table: dict[str, dict[str, torch.Tensor]], null: dict[str, torch.Tensor] | None):
        entries = list(table.values()) + ([null] if null is not None else [])
        longest = (
            {k: max(e[k].shape[0] for e in entries) for k in entries[0] if entries[0][k].ndim >= 1} if entries else {}
        )
        self.table = {p: _pad_entry(e, longest) for p, e in table.items()}
        self.null = _pad_entry(null, longest) if null is not None else None

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        missing = [p for p in prompts if p not in self.table]
        if missing:
            raise ValueError(
                f"prompt {missing[0]!r} was not encoded when the model was loaded (the text encoders "
                f"are freed after encoding the configured prompts); add it to the prompts"
            )
        keys = self.table[prompts[0]].keys()
        return {k: torch.stack([self.table[p][k] for p in prompts]) for k in keys}

    def null_cond(self, n: int) -> dict[str, torch.Tensor]:
        return {k: v.unsqueeze(0).expand(n, *v.shape).contiguous() for k, v in self.null.items()}


def _pad_entry(entry: dict[str, torch.Tensor], longest: dict[str, int]) -> dict[str, torch.Tensor]:
    """Zero-pad each tensor's first dimension (tokens) to `longest[key]`."""
    out = {}
    for k, v in entry.items():
        missing = longest.get(k, 0) - (v.shape[0] if v.ndim else 0)
        out[k] = torch.cat([v, v.new_zeros(missing, *v.shape[1:])]) if missing > 0 else v
    return out


@torch.no_grad()
def encode_prompts(
    pipe, family: ModelFamily, prompts: Sequence[str], max_sequence_length: int, device, batch: int = 16
) -> dict[str, dict[str, torch.Tensor]]:
    """prompt → {cond key: per-prompt tensor, e.g. "prompt_embeds": (L, D), "pooled": (P,)} with the pipeline's
    own `encode_prompt` (as the family record calls it), on the CPU."""
    table = {}
    prompts = list(dict.fromkeys(prompts))
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        encoded = family.diffusers_hooks.encode(pipe, chunk, device, max_sequence_length)
        for j, p in enumerate(chunk):
            table[p] = {k: v[j].cpu() for k, v in encoded.items()}
    return table


def free_text_encoders(pipe) -> None:
    """Drop the pipeline's text encoders, tokenizers and processors (all prompts are encoded)."""
    for name in list(getattr(pipe, "components", {})):
        if name.startswith(("text_encoder", "tokenizer", "processor", "image_processor_vl")):
            setattr(pipe, name, None)


# ---------------------------------------------------------------------------------------------- loading
def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_transformer_file(transformer: nn.Module, path: str, folder: str, dtype: torch.dtype) -> nn.Module:
    """A single-file transformer checkpoint in place of the folder's: diffusers keys load as they are, an
    original-format file (e.g. sd3.5_medium.safetensors) through diffusers' `from_single_file`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"transformer file {path!r} does not exist")
    import safetensors.torch

    sd = safetensors.torch.load_file(path)
    own = transformer.state_dict()
    if set(sd) == set(own):
        bad = [k for k in own if sd[k].shape != own[k].shape]
        if bad:
            raise ValueError(
                f"transformer file {path!r}: {bad[0]!r} has shape {tuple(sd[bad[0]].shape)}, the "
                f"folder's transformer expects {tuple(own[bad[0]].shape)}"
            )
        transformer.load_state_dict({k: v.to(dtype) for k, v in sd.items()})
        return transformer
    try:
        return type(transformer).from_single_file(
            path, config=folder, subfolder="transformer", torch_dtype=dtype, local_files_only=True
        )
    except Exception as e:
        raise ValueError(
            f"transformer file {path!r} is neither in the folder's diffusers key format nor an "
            f"original checkpoint diffusers can convert: {e}"
        ) from None


def latent_size(pixels: int, what: str, multiple: int, vae_scale: int) -> int:
    if not isinstance(pixels, int) or isinstance(pixels, bool) or pixels < 1:
        raise ValueError(f"{what} must be a positive integer number of pixels, got {pixels!r}")
    if pixels % multiple:
        raise ValueError(
            f"{what} {pixels} px is not divisible by {multiple} (VAE scale {vae_scale} × the "
            f"transformer's patch size {multiple // vae_scale}); use e.g. {pixels - pixels % multiple or multiple}"
        )
    return pixels // vae_scale


def load_diffusers_pipeline(
    folder: str,
    device="cpu",
    *,
    prompts: Sequence[str] = (),
    height: int | None = None,
    width: int | None = None,
    dtype="float32",
    transformer_file: str | None = None,
    negative_prompt: str = "",
    cfg_scale: float | None = None,
    guidance: float | None = None,
    max_sequence_length: int | None = None,
):
    """The fields of a FlowPipeline (pipeline.load_pipeline builds it) over the pipeline
    folder (model_index.json decides).

    `prompts` are encoded once (with `negative_prompt` for SD3's CFG) and the text encoders freed; `height` ×
    `width` pixels (default: the transformer's sample size) must be divisible by VAE scale × patch size.
    The family record (densegrpo_core.models.families) gives the rest: SD3: CFG 4.5, shift from the scheduler
    config. FLUX: no CFG, guidance embedding `guidance` (default 3.5), the shift FluxPipeline computes for this
    resolution (`flux_shift`).
    """
    kind, cls_name = pipeline_kind(folder)
    family = FAMILIES[kind]
    hooks = family.diffusers_hooks
    if guidance is None:
        guidance = family.default_guidance
    torch_dtype = _dtype(dtype)
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder, dtype=torch_dtype, local_files_only=True)
    if transformer_file:
        pipe.transformer = load_transformer_file(pipe.transformer, transformer_file, folder, torch_dtype)
    transformer, vae = pipe.transformer, pipe.vae
    # AutoencoderKL: one 2× downsampling per block but the last; video-shaped VAEs (AutoencoderKLQwenImage) say it
    vae_scale = (
        hooks.vae_scale(vae)
        if hooks.vae_scale
        else getattr(vae, "spatial_compression_ratio", None) or 2 ** (len(vae.config.block_out_channels) - 1)
    )
    patch = hooks.latent_patch(transformer)  # FLUX packs 2×2 latent patches
    default_px = hooks.default_latent_size(transformer) * vae_scale  # as diffusers
    h = latent_size(height or default_px, "height", vae_scale * patch, vae_scale)
    w = latent_size(width or default_px, "width", vae_scale * patch, vae_scale)
    max_patches = hooks.max_patches(transformer)
    if max_patches and max(h, w) // patch > max_patches:
        raise ValueError(
            f"{max(h, w) * vae_scale} px exceeds this {family.description} transformer's position table "
            f"(pos_embed_max_size {max_patches}: at most {max_patches * patch * vae_scale} px a side)"
        )
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise ValueError(f"no prompts to encode for {folder!r}: give train_prompts (a .txt file or a list)")
    max_len = max_sequence_length or hooks.max_sequence_length
    pipe.to(device)
    table = encode_prompts(pipe, family, prompts + ([negative_prompt] if family.uses_cfg else []), max_len, device)
    null = table[negative_prompt] if family.uses_cfg else None
    if family.uses_cfg and negative_prompt not in prompts:
        del table[negative_prompt]
    free_text_encoders(pipe)
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cache = PromptCache(table, null)
    sched = diffusers_scheduler_config(folder)
    model, channels = hooks.velocity(transformer, (h, w), guidance), hooks.latent_channels(transformer)
    shift = hooks.shift(sched, (h, w))
    if cfg_scale is not None:
        default_cfg = cfg_scale
    else:  # the family's, or what this folder's pipeline does by default (a step-distilled variant: no CFG)
        default_cfg = hooks.cfg_scale(_model_index(folder)) if hooks.cfg_scale else family.default_cfg
    if not family.uses_cfg and default_cfg != 1.0:
        raise ValueError(
            f"{family.description} has no classifier-free guidance here (cfg_scale must be 1); set `guidance`, "
            f"the guidance embedding value, instead"
        )
    info = {
        "name": os.path.basename(os.path.normpath(folder)),
        "pipeline": cls_name,
        "height": h * vae_scale,
        "width": w * vae_scale,
        "dtype": str(torch_dtype).removeprefix("torch."),
        **({"transformer_file": os.path.basename(transformer_file)} if transformer_file else {}),
        **({"negative_prompt": negative_prompt} if family.uses_cfg else {"guidance": guidance}),
    }
    return dict(
        model=model.to(device),
        encode=cache.encode,
        null_cond=cache.null_cond if null else None,
        decode=(hooks.decoder or VAEDecoder)(vae).to(device),
        latent_shape=(channels, h, w),
        arch=family.diffusers.preset,
        default_shift=shift,
        default_cfg=default_cfg,
        info=info,
        lora_module=transformer,
        lora_prefix=LoraKeys(LORA_PREFIX, hooks.comfy_lora_key) if hooks.comfy_lora_key else LORA_PREFIX,
    )


def _model_index(folder: str) -> dict:
    index = os.path.join(folder, "model_index.json")
    try:
        with open(index) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{index} is not a valid model_index.json: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{index} is not a valid model_index.json: expected a JSON object, got {type(config).__name__}"
        )
    return config


def diffusers_scheduler_config(folder: str) -> dict:
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
