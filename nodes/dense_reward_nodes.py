"""Dense Reward Visualizer and ψ(t) calibration on the user's own model, prompts and reward.

Both run the core's fused rollout (SDE chain + ODE completion from every step, docs/method.md §5, §9) inside
ComfyUI's sampling of the MODEL; the visualizer draws the paper's Fig. 3, the calibration node runs
Algorithm 1 (docs/method.md §8) and saves psi.json where DenseGRPO Load ψ finds it.
"""

from __future__ import annotations

import json
import os

import torch

from densegrpo_core.method.advantages import dense_rewards
from densegrpo_core.method.calibrate import CRITERIA, CalibrationConfig, calibrate, sign_counts
from densegrpo_core.method.rollout import Rollout, fused_rollout
from densegrpo_core.method.schedule import Psi, sde_noise_scales
from densegrpo_core.models.pipeline import dense_reward_sampler, latent_rewards

from . import comfy_bridge as bridge
from .sockets import CFG, GROUP, MAX_BATCH_INPUT, REWARD_TYPE, SEED, STEPS, psi_input, scheduler_input

REWARD_BATCH = 16  # images per reward call


def group_rollout(
    model, positive, negative, cfg, latent_image, sigmas, psi_t, group, seed, node, max_batch, hook=None
) -> Rollout:
    """A fused rollout of `group` trajectories of one prompt: the core Rollout (model latent space)."""
    samples, noise = bridge.prepare_latent_and_noise(model, latent_image, group, seed, node)

    def body(guide, x_T, sig, callback):
        tau = bridge.sigmas_grid(sig, node)
        ro = fused_rollout(
            guide,
            x_T,
            tau,
            sde_noise_scales(psi_t, tau),
            torch.Generator().manual_seed(int(seed)),
            on_step=(lambda k, *_: hook()) if hook else None,
        )
        return ro, ro.latents[:, -1]

    return bridge.run_with_guided_model(model, positive, negative, cfg, noise, samples, sigmas, seed, body, max_batch)[
        0
    ]


class DenseRewardVisualizer:
    DESCRIPTION = (
        "Sample a group of SDE trajectories, finish each step's latent with the ODE, score every "
        "endpoint: R_t and the dense reward ΔR_t per trajectory, with the counts of positive and "
        "negative ΔR_t per step (DenseGRPO Fig. 3)."
    )
    CATEGORY = "DenseGRPO/analysis"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("plot", "ode_images", "numbers")
    OUTPUT_TOOLTIPS = (
        "plot of R_t and ΔR_t per trajectory and #ΔR>0 / #ΔR<0 per step",
        "grid: one row per trajectory, one column per step (ODE-completed image), last = final image",
        "JSON with sigmas, psi, R (B, T+1), dR (B, T), pos, neg",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "a flow-matching model (SD3.5, FLUX, Chroma, Qwen-Image, Z-Image…)"}),
                "positive": ("CONDITIONING", {"tooltip": "the prompt's conditioning"}),
                "negative": ("CONDITIONING", {"tooltip": "negative/unconditional conditioning for CFG"}),
                "vae": ("VAE", {"tooltip": "decodes the ODE-completed latents for the reward"}),
                "reward_model": (REWARD_TYPE, {"tooltip": "scores images against the prompt text"}),
                "prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "the prompt text the reward scores the images against",
                    },
                ),
                "latent_image": ("LATENT", {"tooltip": "an empty latent of the size to sample (its batch is ignored)"}),
                "steps": STEPS,
                "cfg": CFG,
                "scheduler": scheduler_input(),
                "psi": psi_input(),
                "group_size": GROUP,
                "seed": SEED,
            },
            "optional": {
                "max_batch": MAX_BATCH_INPUT,
                "grid_rows": (
                    "INT",
                    {"default": 4, "min": 1, "max": 64, "tooltip": "trajectories shown in ode_images"},
                ),
            },
        }

    def execute(
        self,
        model,
        positive,
        negative,
        vae,
        reward_model,
        prompt,
        latent_image,
        steps,
        cfg,
        scheduler,
        psi,
        group_size,
        seed,
        max_batch=32,
        grid_rows=4,
    ):
        from densegrpo_core.util.plots import image_grid, pil_to_tensor, plot_dense_rewards

        node = "DenseGRPO Dense Reward Visualizer"
        group = bridge.check_group_size(group_size, node)
        if not str(prompt).strip():
            raise bridge.input_error(node, "prompt", "is empty: the reward scores the images against this text")
        sigmas = bridge.flow_sigmas(model, scheduler, steps, node)
        psi_t = bridge.resolve_psi(psi, sigmas, node, f"the grid of scheduler {scheduler!r}").tensor()
        bar = bridge.progress_hook(int(steps) + 1)
        done = [0]

        def hook():
            done[0] += 1
            bar(done[0])

        ro = group_rollout(
            model, positive, negative, cfg, latent_image, sigmas, psi_t, group, seed, node, max_batch, hook
        )
        decode = bridge.ComfyDecoder(vae, model)
        R = latent_rewards(ro, [prompt.strip()] * group, decode, reward_model, REWARD_BATCH)  # (B, T+1)
        bar(int(steps) + 1)
        shown = ro.reward_latents()[: int(grid_rows)]  # (rows, T+1, C, h, w)
        flat = decode(shown.flatten(0, 1))  # (rows·(T+1), H, W, 3)
        images = flat.reshape(*shown.shape[:2], *flat.shape[1:])
        dR = dense_rewards(R)  # (B, T)
        pos, neg = sign_counts(dR)
        title = f"{prompt.strip()[:60]!r}, ψ = {psi_t[0]:.3g}…"
        plot = pil_to_tensor(plot_dense_rewards(R, None, title=title, tau=sigmas.tolist()))
        grid = image_grid(images)
        numbers = {
            "prompt": prompt.strip(),
            "sigmas": sigmas.tolist(),
            "psi": psi_t.tolist(),
            "R": R.tolist(),
            "dR": dR.tolist(),
            "pos": pos.tolist(),
            "neg": neg.tolist(),
            "nfe": ro.nfe,
        }
        return (bridge.images_to_comfy(plot), bridge.images_to_comfy(grid), json.dumps(numbers))


class CalibratePsi:
    DESCRIPTION = (
        "Calibrate the per-step noise level ψ(t) on your model, prompts and reward (DenseGRPO "
        "Algorithm 1): raise ψ where positive and negative ΔR_t are balanced, lower it elsewhere. "
        "Saves psi.json to output/densegrpo/psi/ for DenseGRPO Load ψ and training."
    )
    CATEGORY = "DenseGRPO/psi"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = (psi_input()[0], "IMAGE", "STRING")
    RETURN_NAMES = ("psi", "history_plot", "psi_file")
    OUTPUT_TOOLTIPS = (
        "the calibrated ψ(t) (mean of the last iterations)",
        "ψ(t) across the calibration iterations",
        "path of the saved psi.json",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "a flow-matching model (SD3.5, FLUX, Chroma, Qwen-Image, Z-Image…)"}),
                "clip": ("CLIP", {"tooltip": "text encoder that encodes the prompts"}),
                "vae": ("VAE", {"tooltip": "decodes latents for the reward"}),
                "reward_model": (REWARD_TYPE, {"tooltip": "the reward you will train with"}),
                "prompts": (
                    "STRING",
                    {"multiline": True, "default": "", "tooltip": "calibration prompts, one per line"},
                ),
                "negative_prompt": (
                    "STRING",
                    {"multiline": False, "default": "", "tooltip": "negative prompt for CFG (empty = unconditional)"},
                ),
                "latent_image": ("LATENT", {"tooltip": "an empty latent of the training resolution"}),
                "steps": STEPS,
                "cfg": CFG,
                "scheduler": scheduler_input(),
                "psi_init": psi_input("starting ψ(t) (e.g. uniform 0.7, Flow-GRPO's)"),
                "iterations": ("INT", {"default": 20, "min": 1, "max": 1000, "tooltip": "Algorithm 1 iterations"}),
                "prompts_per_iteration": (
                    "INT",
                    {"default": 2, "min": 1, "max": 64, "tooltip": "prompts drawn per iteration"},
                ),
                "group_size": GROUP,
                "criterion": (
                    list(CRITERIA),
                    {
                        "default": "relative",
                        "tooltip": "balanced if |pos-neg| < eps1 (literal, paper) or "
                        "|pos-neg|/N < delta (relative; the literal test rarely "
                        "holds for N > 20)",
                    },
                ),
                "eps2": (
                    "FLOAT",
                    {"default": 0.01, "min": 0.0001, "max": 1.0, "step": 0.001, "tooltip": "ψ change per iteration"},
                ),
                "seed": SEED,
                "save_name": ("STRING", {"default": "psi_calibrated", "tooltip": "file name of the saved psi.json"}),
            },
            "optional": {
                "eps1": (
                    "FLOAT",
                    {"default": 2.0, "min": 0.0, "max": 1000.0, "tooltip": "literal criterion threshold"},
                ),
                "delta": (
                    "FLOAT",
                    {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "relative criterion threshold"},
                ),
                "max_batch": MAX_BATCH_INPUT,
            },
        }

    def execute(
        self,
        model,
        clip,
        vae,
        reward_model,
        prompts,
        negative_prompt,
        latent_image,
        steps,
        cfg,
        scheduler,
        psi_init,
        iterations,
        prompts_per_iteration,
        group_size,
        criterion,
        eps2,
        seed,
        save_name,
        eps1=2.0,
        delta=0.1,
        max_batch=32,
    ):
        import folder_paths

        from densegrpo_core.util.plots import pil_to_tensor, plot_psi_history

        node = "DenseGRPO Calibrate ψ"
        prompt_list = bridge.parse_prompts(prompts, node)
        group = bridge.check_group_size(group_size, node)
        sigmas = bridge.flow_sigmas(model, scheduler, steps, node)
        psi0 = Psi(
            bridge.resolve_psi(psi_init, sigmas, node, f"the grid of scheduler {scheduler!r}", "psi_init").values,
            tau=sigmas.tolist(),
            meta={"source": "initial"},
        )
        config = CalibrationConfig(
            iterations=int(iterations),
            eps1=float(eps1),
            eps2=float(eps2),
            criterion=criterion,
            delta=float(delta),
            average_last=min(5, int(iterations)),
        )
        conds = dict(zip(prompt_list, bridge.encode_prompts(clip, prompt_list, node)))
        negative = bridge.encode_prompts(clip, [negative_prompt], node)[0]
        decode = bridge.ComfyDecoder(vae, model)
        total = int(iterations) * int(prompts_per_iteration)
        bar, done = bridge.progress_hook(total), [0]

        def batch_rewards(batch: list[str], psi_t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            """R (N, T+1) of the batch's prompt groups, one rollout per group inside ComfyUI's sampling."""
            R = []
            for start in range(0, len(batch), group):
                run_seed = int(torch.randint(2**31, (1,), generator=gen))
                ro = group_rollout(
                    model,
                    conds[batch[start]],
                    negative,
                    cfg,
                    latent_image,
                    sigmas,
                    psi_t,
                    group,
                    run_seed,
                    node,
                    max_batch,
                )
                R.append(latent_rewards(ro, batch[start : start + group], decode, reward_model, REWARD_BATCH))
                done[0] += 1
                bar(done[0])
            return torch.cat(R)

        try:
            sampler = dense_reward_sampler(
                batch_rewards,
                prompt_list,
                prompts_per_iteration=int(prompts_per_iteration),
                group_size=group,
                seed=int(seed),
            )
        except ValueError as e:
            raise bridge.input_error(node, "prompts_per_iteration", str(e)) from None
        result = calibrate(sampler, psi0, config)
        result.psi.meta.update(
            {
                "steps": int(steps),
                "scheduler": scheduler,
                "cfg": float(cfg),
                "prompts": len(prompt_list),
                "group_size": group,
                "history": result.history,
            }
        )
        folder = os.path.join(folder_paths.get_output_directory(), "densegrpo", "psi")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, bridge.sanitize_name(save_name, "psi_calibrated") + ".json")
        result.psi.save(path)
        plot = pil_to_tensor(plot_psi_history(result.history))
        text = f"{path}\npsi = " + ", ".join(f"{v:.3f}" for v in result.psi.values)
        return {"ui": {"text": [text]}, "result": (result.psi, bridge.images_to_comfy(plot), path)}


NODES = {
    "DenseGRPO_DenseRewardVisualizer": (DenseRewardVisualizer, "DenseGRPO Dense Reward Visualizer"),
    "DenseGRPO_CalibratePsi": (CalibratePsi, "DenseGRPO Calibrate ψ"),
}
