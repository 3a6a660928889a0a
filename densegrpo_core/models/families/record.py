"""The record of one model family: what the rest of the code needs to know about it, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

IMPLEMENTATIONS = ("core", "comfy", "diffusers")  # whose module names a preset / block list is written for


@dataclass(frozen=True)
class Implementation:
    """One implementation of a family's network (ComfyUI's, diffusers', or the core's own)."""

    preset: str  # the LoRA target preset name (`lora.TARGET_PRESETS`, also the pipeline's `arch`)
    targets: str  # full-name regex of the nn.Linear modules LoRA adapts (peft re.fullmatch)
    block_lists: tuple[str, ...]  # ModuleList attribute names holding the blocks to checkpoint
    last_block_unused: tuple[str, ...] = ()  # target Linears (paths inside a block) whose output the network
    # drops in the last block of each block list: no LoRA there (`lora._discarded_outputs`), it would get no gradient


@dataclass(frozen=True)
class DiffusersHooks:
    """How a diffusers pipeline folder of the family becomes a FlowPipeline (diffusers_pipeline.py)."""

    encode: Callable  # (pipe, prompts, device, max_sequence_length) → {cond key: (N, ...) tensor}, e.g.
    # {"prompt_embeds": (N, L, D), "pooled": (N, P)}; the keys are what `velocity` reads from its cond dict.
    # Tensors whose first per-prompt dimension differs between prompts (token sequences; their masks) are
    # zero-padded to the longest over all encoded prompts (diffusers_pipeline.PromptCache)
    velocity: Callable  # (transformer, latent_hw, guidance) → VelocityModel
    latent_channels: Callable  # transformer → channels of the unpacked latent
    latent_patch: Callable  # transformer → latent pixels per transformer patch side
    default_latent_size: Callable  # transformer → default latent side (as diffusers)
    max_patches: Callable  # transformer → largest number of patches a side, or None
    shift: Callable  # (scheduler_config, latent_hw) → the grid shift diffusers uses
    max_sequence_length: int  # text tokens per prompt
    decoder: Callable | None = None  # vae → Decoder module (latents (N, C, h, w) → images (N, H, W, 3) in [0, 1]);
    # None: diffusers_pipeline.VAEDecoder (AutoencoderKL: latents / scaling_factor + shift_factor)
    vae_scale: Callable | None = None  # vae → pixels per latent pixel; None: 2^(VAE blocks − 1) (AutoencoderKL)
    cfg_scale: Callable | None = None  # model_index.json dict → the folder's default CFG scale (e.g. 1 for a
    # step-distilled variant); None: ModelFamily.default_cfg
    comfy_lora_key: Callable | None = None  # diffusers module name → the key base of its LoRA in ComfyUI's layout
    # where ComfyUI's loader does not map "transformer." + name (e.g. "diffusion_model.single_blocks.0.linear1"),
    # or None where it does; None: every key is "transformer." + name (lora.LoraKeys)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    description: str
    core: Implementation | None = None  # the core's own network (the toy)
    comfy: Implementation | None = None  # ComfyUI's implementation (comfy.ldm)
    diffusers: Implementation | None = None  # diffusers' implementation
    default_shift: float | None = None  # None: the model's own files say (the toy's weights metadata)
    default_cfg: float | None = None  # CFG scale that suits it (1: no CFG)
    default_guidance: float | None = None  # guidance-embedding value (FLUX.1-dev), None if it has none
    uses_cfg: bool = True  # takes a negative prompt / null conditioning for classifier-free guidance
    diffusers_pipelines: tuple[str, ...] = ()  # model_index.json `_class_name`s it covers
    diffusers_hooks: DiffusersHooks | None = None
    comfy_models: tuple[str, ...] = ()  # ComfyUI BaseModel class names (comfy.model_base) it covers
    comfy_patch: str | None = None  # name of a hook in nodes/comfy_training.py (COMFY_PATCHES) that makes
    # ComfyUI's network differentiable, applied to the private copy's diffusion_model

    def implementation(self, kind: str) -> Implementation | None:
        if kind not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {kind!r}")
        return getattr(self, kind)
