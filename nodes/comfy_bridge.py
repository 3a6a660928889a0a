"""The one place that knows ComfyUI internals: ComfyUI objects → the core's protocols.

- a MODEL + positive/negative CONDITIONING + CFG → a guided VelocityModel, on ComfyUI's own sampling
  path (`CFGGuider.sample` with a custom KSAMPLER whose function runs core code): ComfyUI loads the
  model, prepares the conds, applies patches/LoRAs, and inside the sampler function the CFG-wrapped
  denoiser is called as often as the core needs, at any batch size (conds repeat to the batch);
- a VAE (+ the model's latent format) → the core's Decoder;
- a CLIP → the prompt encoder.

Everything that needs `comfy` imports it inside the function, so the pure helpers here are unit-tested
without ComfyUI. No formula lives here: velocity/denoised conversion, SDE steps and rollouts are the
core's.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Sequence

import torch

from densegrpo_core.method.guidance import DenoiserVelocity, GuidedVelocity
from densegrpo_core.method.schedule import validate_grid


class NodeInputError(ValueError):
    """A bad node input; ComfyUI shows the message as the node's error."""


def input_error(node: str, name: str, problem: str) -> NodeInputError:
    return NodeInputError(f"{node}: input '{name}' {problem}")


# --------------------------------------------------------------------------- pure helpers


def parse_prompts(text: str, node: str, name: str = "prompts") -> list[str]:
    """One prompt per non-empty line ('#' starts a comment line)."""
    prompts = [line.strip() for line in str(text).splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise input_error(node, name, "is empty: give at least one prompt (one per line)")
    return prompts


def check_group_size(group_size: int, node: str) -> int:
    if int(group_size) < 2:
        raise input_error(node, "group_size", f"must be >= 2 (GRPO compares samples of one prompt), got {group_size}")
    return int(group_size)


def check_latent_channels(
    samples: torch.Tensor, channels: int, node: str, name: str = "latent_image", dims: int = 2
) -> None:
    """Refuse a latent whose layout or channel count does not match the model's latent format: (B, C, H, W) for
    `dims` = 2 latent dimensions, (B, C, T, H, W) for 3 (the format's `latent_dimensions`, e.g. Qwen-Image's)."""
    layout = f"(B, C, {', '.join(('T', 'H', 'W')[-dims:])})"
    if samples.ndim != 2 + dims:
        raise input_error(
            node, name, f"must be a batch of latents {layout} for this model, got shape {tuple(samples.shape)}"
        )
    if samples.shape[1] != channels:
        raise input_error(
            node,
            name,
            f"has {samples.shape[1]} channels but this model's latents have {channels} "
            f"(use an empty latent made for this model, e.g. EmptySD3LatentImage)",
        )


def model_latent(model, samples: torch.Tensor, node: str, name: str = "latent_image") -> torch.Tensor:
    """The input latent in the layout the model samples in, checked: an image latent (B, C, H, W) gains the frame
    axis (B, C, 1, H, W) when the model's latent format has 3 latent dimensions, as ComfyUI's samplers do
    (comfy.sample.fix_empty_latent_channels; Qwen-Image's Wan 2.1 format)."""
    fmt = model.get_model_object("latent_format")
    dims = int(getattr(fmt, "latent_dimensions", 2))
    if dims == 3 and samples.ndim == 4:
        samples = samples.unsqueeze(2)
    check_latent_channels(samples, int(fmt.latent_channels), node, name, dims)
    return samples


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_name(name: str, default: str = "densegrpo") -> str:
    """A file-name stem safe inside one folder: no separators, no '..', no leading dots."""
    stem = os.path.basename(str(name).replace("\\", "/").rstrip("/"))
    stem = _UNSAFE.sub("_", stem).strip("._-")
    stem = stem.replace("..", "_")
    return stem[:80] or default


def images_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) float in [0, 1] → ComfyUI IMAGE (N, H, W, 3) float32 on CPU."""
    if images.ndim == 3:
        images = images[None]
    return images.detach().float().clamp(0, 1).cpu().contiguous()


# --------------------------------------------------------------------------- ComfyUI objects


def require_flow_model(model, node: str, name: str = "model"):
    """The model's sampling object; NodeInputError unless it is flow matching (CONST: SD3/SD3.5, FLUX,
    Qwen-Image, Z-Image…)."""
    import comfy.model_sampling

    ms = model.get_model_object("model_sampling")
    if not isinstance(ms, comfy.model_sampling.CONST):
        raise input_error(
            node,
            name,
            f"is not a flow-matching model (its model sampling is {type(ms).__name__}); "
            f"DenseGRPO needs a rectified-flow model, not an eps/v-prediction model such as SD1.5/SDXL; "
            f"{supported_families_text()}",
        )
    return ms


def supported_families_text() -> str:
    """The model families with a ComfyUI record, for error messages: "supported families: SD3 … (SD3); …"."""
    from densegrpo_core.models.families import FAMILIES

    rows = [f"{f.description} ({', '.join(f.comfy_models)})" for f in FAMILIES.values() if f.comfy_models]
    return "supported families: " + "; ".join(rows)


def latent_channels(model) -> int:
    return int(model.get_model_object("latent_format").latent_channels)


def flow_sigmas(model, scheduler: str, steps: int, node: str) -> torch.Tensor:
    """SIGMAS of a ComfyUI scheduler for a flow model: the grid τ(T) … τ(0) = 0 (docs/method.md §1)."""
    import comfy.samplers

    if int(steps) < 1:
        raise input_error(node, "steps", f"must be >= 1, got {steps}")
    ms = require_flow_model(model, node)
    return comfy.samplers.calculate_sigmas(ms, scheduler, int(steps)).float().cpu()


def resolve_psi(psi, sigmas: torch.Tensor, node: str, where: str = "this node's sigmas", name: str = "psi"):
    """The Psi for the grid `sigmas` (T+1,): a uniform ψ stretches to T steps, a calibrated one must have been
    calibrated on these sigmas (docs/method.md §2); otherwise a node error naming the input and both grids."""
    try:
        return psi.resolve(len(sigmas) - 1).check_grid(torch.as_tensor(sigmas).tolist(), where)
    except ValueError as e:
        raise input_error(node, name, str(e)) from None


def sigmas_grid(sigmas: torch.Tensor, node: str) -> torch.Tensor:
    """SIGMAS as the flow grid τ(T) … τ(0) (docs/method.md §1), or a clear error for non-flow sigmas."""
    try:
        return validate_grid(sigmas.detach().float().cpu(), "sigmas")
    except ValueError as e:
        raise input_error(
            node,
            "sigmas",
            f"are not a flow-matching schedule ({e}); use a flow model and a scheduler ending at 0",
        ) from None


def progress_hook(total: int) -> Callable[[int], None]:
    """A per-step hook for the executor thread: advances the node's progress bar, honours Cancel."""
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def hook(done: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total)

    return hook


def run_with_guided_model(
    model,
    positive,
    negative,
    cfg: float,
    noise: torch.Tensor,
    latent: torch.Tensor,
    sigmas: torch.Tensor,
    seed: int,
    body: Callable,
    max_batch: int = 64,
):
    """Run `body(guide, x_T, sigmas, callback) -> (result, final_latent)` inside ComfyUI's sampling of MODEL.

    `guide` is the core's GuidedVelocity over ComfyUI's CFG-wrapped denoiser (guidance already applied,
    so the core's own CFG is off); x_T is the noised start latent in the model's latent space; `callback`
    is ComfyUI's per-step preview callback (or None). Returns (`result`, the sampled LATENT tensor as
    ComfyUI's samplers return it). The model is loaded/patched by ComfyUI exactly as for its own samplers.
    """
    import comfy.samplers

    out = {}

    def sampler_function(model_k, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        guide = GuidedVelocity(DenoiserVelocity(model_k, dict(extra_args or {})), None, None, 1.0, max_batch)
        out["result"], final = body(guide, x, sigmas, callback)
        return final

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    samples = guider.sample(
        noise, latent, comfy.samplers.KSAMPLER(sampler_function), sigmas, disable_pbar=True, seed=seed
    )
    return out["result"], samples


def prepare_latent_and_noise(model, latent: dict, batch: int, seed: int, node: str):
    """A (batch, C, H, W) start latent ((batch, C, T, H, W) for a 3-D latent format; the input's first latent
    repeated) and ComfyUI's seeded noise."""
    import comfy.sample

    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    samples = model_latent(model, samples, node)
    samples = samples[:1].repeat(batch, *[1] * (samples.ndim - 1))
    noise = comfy.sample.prepare_noise(samples, int(seed))
    return samples, noise


class ComfyDecoder:
    """The core's Decoder from a ComfyUI VAE: model-space latents (N, C, H, W) → images (N, H, W, 3) in [0, 1]."""

    def __init__(self, vae, model, batch: int = 8):
        self.vae, self.batch = vae, batch
        self.latent_out = model.get_model_object("process_latent_out")

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        images = [
            self.vae.decode(self.latent_out(latents[i : i + self.batch].float()))
            for i in range(0, latents.shape[0], self.batch)
        ]
        images = torch.cat([im.reshape(-1, *im.shape[-3:]) for im in images])
        return images[..., :3].float().clamp(0, 1)


def encode_prompts(clip, prompts: Sequence[str], node: str) -> list:
    """CONDITIONING per prompt, as CLIPTextEncode makes it."""
    if clip is None:
        raise input_error(node, "clip", "is missing (a checkpoint without a text encoder?); connect a CLIP loader")
    return [clip.encode_from_tokens_scheduled(clip.tokenize(p)) for p in prompts]
