"""The DenseGRPO SDE sampler: a SAMPLER for SamplerCustom / SamplerCustomAdvanced, and a KSampler-like node.

The sampler runs the core's SDE chain (docs/method.md §3) with ψ(t) on ComfyUI's CFG-wrapped model; ψ = 0 is
the Euler ODE and reproduces the stock `euler` sampler bit for bit.
"""

from __future__ import annotations

import torch

from densegrpo_core.method.guidance import DenoiserVelocity, GuidedVelocity, denoised_from_velocity
from densegrpo_core.method.rollout import Rollout, sde_chain
from densegrpo_core.method.schedule import Psi, sde_noise_scales

from . import comfy_bridge as bridge
from .sockets import CFG, MAX_BATCH_INPUT, SEED, psi_input, scheduler_input

TRAJECTORY_TYPE = "DENSEGRPO_TRAJECTORY"
SAMPLER_NODE = "DenseGRPO SDE Sampler"


def sde_trajectory(
    guide: GuidedVelocity, x: torch.Tensor, sigmas: torch.Tensor, psi: Psi, seed: int, callback=None, on_step=None
) -> Rollout:
    """The SDE chain of docs/method.md §3 with ψ(t) on ComfyUI's SIGMAS; `callback` gets ComfyUI's per-step dict."""
    tau = bridge.sigmas_grid(sigmas, SAMPLER_NODE)
    psi_t = bridge.resolve_psi(psi, tau, SAMPLER_NODE).tensor()

    def step(k, x_k, v_k):
        if callback is not None:
            callback(
                {
                    "x": x_k,
                    "i": k,
                    "sigma": sigmas[k],
                    "sigma_hat": sigmas[k],
                    "denoised": denoised_from_velocity(x_k, v_k, sigmas[k]),
                }
            )
        if on_step is not None:
            on_step(k)

    return sde_chain(guide, x, tau, sde_noise_scales(psi_t, tau), torch.Generator().manual_seed(int(seed)), step)


def sde_sampler_function(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    *,
    psi: Psi,
    seed: int = 0,
    max_batch: int = 32,
    recorder: dict | None = None,
):
    """k-diffusion-style sampler function (ComfyUI KSAMPLER): the SDE chain of docs/method.md §3 with ψ(t)."""
    guide = GuidedVelocity(DenoiserVelocity(model, dict(extra_args or {})), None, None, 1.0, max_batch)
    ro = sde_trajectory(guide, x, sigmas, psi, seed, callback)
    if recorder is not None:
        recorder["rollout"] = ro
    return ro.latents[:, -1]


def make_sampler(psi: Psi, seed: int, max_batch: int = 32, recorder: dict | None = None):
    import comfy.samplers

    return comfy.samplers.KSAMPLER(
        sde_sampler_function,
        extra_options={"psi": psi, "seed": int(seed), "max_batch": int(max_batch), "recorder": recorder},
    )


class SDESampler:
    DESCRIPTION = (
        "DenseGRPO/Flow-GRPO SDE sampler with a per-step noise level ψ(t), for SamplerCustom / "
        "SamplerCustomAdvanced with any SIGMAS of a flow model. ψ = 0 is the Euler ODE."
    )
    CATEGORY = "DenseGRPO/sampling"
    FUNCTION = "execute"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("a SAMPLER for SamplerCustom / SamplerCustomAdvanced",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "psi": psi_input(),
                "seed": (
                    SEED[0],
                    {
                        **SEED[1],
                        "tooltip": "seed of the SDE noise added at every step (the start noise "
                        "comes from the NOISE / noise_seed input of the sampling node)",
                    },
                ),
            },
            "optional": {"max_batch": MAX_BATCH_INPUT},
        }

    def execute(self, psi, seed, max_batch=32):
        return (make_sampler(psi, seed, max_batch),)


class KSamplerSDE:
    DESCRIPTION = (
        "Sample a flow model (SD3.5, FLUX, Qwen-Image, Z-Image, Chroma…) with the DenseGRPO SDE sampler and ψ(t), "
        "like KSampler. "
        "Also outputs the trajectory (latents and per-step log-probabilities)."
    )
    CATEGORY = "DenseGRPO/sampling"
    FUNCTION = "execute"
    RETURN_TYPES = ("LATENT", TRAJECTORY_TYPE, "STRING")
    RETURN_NAMES = ("latent", "trajectory", "info")
    OUTPUT_TOOLTIPS = (
        "the sampled latent",
        "latents x_T … x_0 (B, T+1, C, H, W), log-probabilities (B, T), sigmas and ψ of this run",
        "a one-line summary (steps, ψ, mean log-probability)",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "a flow-matching model (SD3.5, FLUX, Chroma, Qwen-Image, Z-Image…)"}),
                "positive": ("CONDITIONING", {"tooltip": "the prompt's conditioning"}),
                "negative": ("CONDITIONING", {"tooltip": "the negative/unconditional conditioning for CFG"}),
                "latent_image": ("LATENT", {"tooltip": "an empty latent of the size to sample"}),
                "seed": SEED,
                "steps": ("INT", {"default": 10, "min": 1, "max": 1000, "tooltip": "sampling steps T"}),
                "cfg": CFG,
                "scheduler": scheduler_input(),
                "psi": psi_input(),
            },
            "optional": {"max_batch": MAX_BATCH_INPUT},
        }

    def execute(self, model, positive, negative, latent_image, seed, steps, cfg, scheduler, psi, max_batch=32):
        import comfy.sample

        node = "DenseGRPO KSampler (SDE)"
        sigmas = bridge.flow_sigmas(model, scheduler, steps, node)
        samples = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        samples = bridge.model_latent(model, samples, node)
        noise = comfy.sample.prepare_noise(samples, int(seed))
        hook = bridge.progress_hook(int(steps))

        def body(guide, x, sig, callback):
            ro = sde_trajectory(guide, x, sig, psi, seed, callback, on_step=lambda k: hook(k + 1))
            return ro, ro.latents[:, -1]

        ro, out = bridge.run_with_guided_model(
            model, positive, negative, cfg, noise, samples, sigmas, seed, body, max_batch
        )
        trajectory = {
            "latents": ro.latents.cpu(),
            "log_probs": ro.log_probs,
            "sigmas": sigmas,
            "psi": bridge.resolve_psi(psi, sigmas, node).values,
        }
        lp = ro.log_probs[:, ro.trainable].mean().item() if ro.trainable.any() else float("nan")
        info = f"{steps} steps, psi={trajectory['psi'][0]:.3g}…, mean log-prob {lp:.4g}"
        return ({**latent_image, "samples": out}, trajectory, info)


NODES = {
    "DenseGRPO_SDESampler": (SDESampler, "DenseGRPO SDE Sampler (ψ)"),
    "DenseGRPO_KSamplerSDE": (KSamplerSDE, "DenseGRPO KSampler (SDE, ψ)"),
}
