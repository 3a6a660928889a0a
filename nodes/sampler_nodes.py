"""The DenseGRPO SDE sampler: a SAMPLER for SamplerCustom / SamplerCustomAdvanced, and a KSampler-like node.

The sampler runs the core's SDE chain (MATH.md §3) with ψ(t) on ComfyUI's CFG-wrapped model; ψ = 0 is
the Euler ODE and reproduces the stock `euler` sampler bit for bit.
"""
from __future__ import annotations

import torch

from densegrpo_core.guidance import DenoiserVelocity, GuidedVelocity, denoised_from_velocity
from densegrpo_core.rollout import sde_chain
from densegrpo_core.schedule import Psi, sde_noise_scales, validate_grid

from . import comfy_bridge as bridge
from .psi_nodes import PSI_TOOLTIP, PSI_TYPE

TRAJECTORY_TYPE = "DENSEGRPO_TRAJECTORY"
SAMPLER_NODE = "DenseGRPO SDE Sampler"
MAX_BATCH_INPUT = ("INT", {"default": 32, "min": 1, "max": 4096,
                           "tooltip": "most latents per model call (lower it if you run out of memory)"})


def flow_grid(sigmas: torch.Tensor, node: str) -> torch.Tensor:
    """SIGMAS as the flow grid τ(T) … τ(0) (MATH.md §1), or a clear error for non-flow sigmas."""
    try:
        return validate_grid(sigmas.detach().float().cpu(), "sigmas")
    except ValueError as e:
        raise bridge.input_error(node, "sigmas", f"are not a flow-matching schedule ({e}); use a flow model "
                                                 f"(SD3/SD3.5, FLUX) and a scheduler ending at 0") from None


def sde_sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                         psi: Psi, seed: int = 0, max_batch: int = 32, recorder: dict | None = None):
    """k-diffusion-style sampler function (ComfyUI KSAMPLER): the SDE chain of MATH.md §3 with ψ(t)."""
    tau = flow_grid(sigmas, SAMPLER_NODE)
    psi_t = bridge.resolve_psi(psi, tau, SAMPLER_NODE).tensor()
    guide = GuidedVelocity(DenoiserVelocity(model, dict(extra_args or {})), None, None, 1.0, max_batch)

    def on_step(k, x_k, v_k):
        if callback is not None:
            callback({"x": x_k, "i": k, "sigma": sigmas[k], "sigma_hat": sigmas[k],
                      "denoised": denoised_from_velocity(x_k, v_k, sigmas[k])})

    ro = sde_chain(guide, x, tau, sde_noise_scales(psi_t, tau), torch.Generator().manual_seed(int(seed)), on_step)
    if recorder is not None:
        recorder["rollout"] = ro
    return ro.latents[:, -1]


def make_sampler(psi: Psi, seed: int, max_batch: int = 32, recorder: dict | None = None):
    import comfy.samplers
    return comfy.samplers.KSAMPLER(sde_sampler_function, extra_options={
        "psi": psi, "seed": int(seed), "max_batch": int(max_batch), "recorder": recorder})


class SDESampler:
    DESCRIPTION = ("DenseGRPO/Flow-GRPO SDE sampler with a per-step noise level ψ(t), for SamplerCustom / "
                   "SamplerCustomAdvanced with any SIGMAS of a flow model. ψ = 0 is the Euler ODE.")
    CATEGORY = "DenseGRPO/sampling"
    FUNCTION = "execute"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("a SAMPLER for SamplerCustom / SamplerCustomAdvanced",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "psi": (PSI_TYPE, {"tooltip": PSI_TOOLTIP}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "seed of the SDE noise added at every step (the start noise comes from "
                                        "the NOISE / noise_seed input of the sampling node)"}),
        }, "optional": {"max_batch": MAX_BATCH_INPUT}}

    def execute(self, psi, seed, max_batch=32):
        return (make_sampler(psi, seed, max_batch),)


class KSamplerSDE:
    DESCRIPTION = ("Sample a flow model (SD3/SD3.5, FLUX) with the DenseGRPO SDE sampler and ψ(t), like KSampler. "
                   "Also outputs the trajectory (latents and per-step log-probabilities).")
    CATEGORY = "DenseGRPO/sampling"
    FUNCTION = "execute"
    RETURN_TYPES = ("LATENT", TRAJECTORY_TYPE, "STRING")
    RETURN_NAMES = ("latent", "trajectory", "info")
    OUTPUT_TOOLTIPS = ("the sampled latent", "latents x_T … x_0 (B, T+1, C, H, W), log-probabilities (B, T), "
                       "sigmas and ψ of this run", "a one-line summary (steps, ψ, mean log-probability)")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "a flow-matching model (SD3/SD3.5, FLUX)"}),
            "positive": ("CONDITIONING", {"tooltip": "the prompt's conditioning"}),
            "negative": ("CONDITIONING", {"tooltip": "the negative/unconditional conditioning for CFG"}),
            "latent_image": ("LATENT", {"tooltip": "an empty latent of the size to sample"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "seed of the start noise and of the SDE noise"}),
            "steps": ("INT", {"default": 10, "min": 1, "max": 1000, "tooltip": "sampling steps T"}),
            "cfg": ("FLOAT", {"default": 4.5, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "CFG scale"}),
            "scheduler": (bridge.scheduler_names(), {"default": "normal",
                                                     "tooltip": "sigma schedule (normal = Flow-GRPO's for SD3)"}),
            "psi": (PSI_TYPE, {"tooltip": PSI_TOOLTIP}),
        }, "optional": {"max_batch": MAX_BATCH_INPUT}}

    def execute(self, model, positive, negative, latent_image, seed, steps, cfg, scheduler, psi, max_batch=32):
        import comfy.sample
        import comfy.samplers
        node = "DenseGRPO KSampler (SDE)"
        sigmas = bridge.flow_sigmas(model, scheduler, steps, node)
        samples = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        bridge.check_latent_channels(samples, bridge.latent_channels(model), node)
        noise = comfy.sample.prepare_noise(samples, int(seed))
        recorder = {}
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(float(cfg))
        hook = bridge.progress_hook(int(steps))
        out = guider.sample(noise, samples, make_sampler(psi, seed, max_batch, recorder), sigmas,
                            callback=lambda i, *_: hook(i + 1), disable_pbar=True, seed=int(seed))
        ro = recorder["rollout"]
        trajectory = {"latents": ro.latents.cpu(), "log_probs": ro.log_probs, "sigmas": sigmas,
                      "psi": bridge.resolve_psi(psi, sigmas, node).values}
        lp = ro.log_probs[:, ro.trainable].mean().item() if ro.trainable.any() else float("nan")
        info = f"{steps} steps, psi={trajectory['psi'][0]:.3g}…, mean log-prob {lp:.4g}"
        return ({**latent_image, "samples": out}, trajectory, info)


NODES = {"DenseGRPO_SDESampler": (SDESampler, "DenseGRPO SDE Sampler (ψ)"),
         "DenseGRPO_KSamplerSDE": (KSamplerSDE, "DenseGRPO KSampler (SDE, ψ)")}
