"""The work of one background training job: the core Trainer plus LoRA export into a LoRA folder.

`training_work(...)` returns a function for `JobManager.submit`: it builds the Trainer on the job's own
pipeline (a private model copy), resumes from a checkpoint if asked, trains until done or stopped, and at
every checkpoint writes the LoRA atomically as `<lora_dir>/<name>_<iteration>.safetensors` (a new name
each time: ComfyUI caches LoRAs by path) and `<name>_latest.safetensors`, plus status plots and sample
images into the job folder (each written beside and renamed over: a reader never sees half a PNG). A resume
emits a "resumed" event with the run's history from the checkpoint, so the job's curve starts at iteration 1.
An exception ends the job; the LoRA files written before it stay.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Sequence

import torch

from ..models.pipeline import FlowPipeline, evaluate_ode
from ..training.trainer import TrainConfig, Trainer
from ..util.atomic import atomic_write

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
# The status files `save_status_plots` writes into a job folder, in the order a UI shows them
REWARD_CURVE_FILE, DENSE_REWARDS_FILE, SAMPLES_FILE = "reward_curve.png", "dense_rewards.png", "samples.png"
STATUS_FILES = (REWARD_CURVE_FILE, DENSE_REWARDS_FILE, SAMPLES_FILE)


def lora_file_names(lora_dir: str, name: str, iteration: int) -> tuple[str, str]:
    """(`<name>_<iteration:05d>.safetensors`, `<name>_latest.safetensors`) inside lora_dir; the name must be
    a sanitised stem (no separators), so the files never leave lora_dir."""
    if not NAME_RE.match(name) or ".." in name:
        raise ValueError(f"LoRA name must be a plain file-name stem (letters, digits, . _ -), got {name!r}")
    return (
        os.path.join(lora_dir, f"{name}_{iteration:05d}.safetensors"),
        os.path.join(lora_dir, f"{name}_latest.safetensors"),
    )


@torch.no_grad()
def sample_grid(trainer: Trainer, prompts: Sequence[str], seed: int = 0) -> torch.Tensor:
    """ODE samples of the current policy (EMA if enabled) for a few prompts: one row (N·H, W, 3) image."""
    from ..util.plots import image_grid

    with trainer.ema_weights():
        res = evaluate_ode(
            trainer.pipe,
            trainer.reward,
            list(prompts),
            seeds=(seed,),
            tau=trainer.tau,
            cfg_scale=trainer.cfg_scale,
            device=trainer.device,
            max_batch=trainer.config.max_batch,
            autocast_dtype=trainer.autocast_dtype,
        )
    images = trainer.pipe.decode(res["latents"].to(trainer.device)).float().cpu()  # (N, H, W, 3)
    return image_grid(images[None])


def save_status_plots(trainer: Trainer, folder: str, sample_prompts: Sequence[str]) -> dict:
    """reward_curve.png, dense_rewards.png (last iteration's R_t, ΔR_t) and samples.png into the job folder."""
    from PIL import Image

    from ..util.plots import plot_dense_rewards, plot_reward_curves

    paths = {}
    if trainer.metrics:
        curves = {
            "training reward (SDE rollouts)": {
                "iterations": [m["iteration"] for m in trainer.metrics],
                "reward_mean": [m["reward_mean"] for m in trainer.metrics],
            }
        }
        if trainer.evals:
            curves["evaluation reward (ODE)"] = {
                "iterations": [e["iteration"] for e in trainer.evals],
                "reward_mean": [e["reward_mean"] for e in trainer.evals],
            }
            for name in dict.fromkeys(n for e in trainer.evals for n in e.get("eval_rewards", {})):
                held = [e for e in trainer.evals if name in e.get("eval_rewards", {})]
                curves[f"held-out {name} (ODE)"] = {
                    "iterations": [e["iteration"] for e in held],
                    "reward_mean": [e["eval_rewards"][name] for e in held],
                }
        paths["reward_curve"] = _save_png(plot_reward_curves(curves), os.path.join(folder, REWARD_CURVE_FILE))
    R = getattr(trainer, "last_rewards", None)
    if R is not None and R.ndim == 2 and R.shape[1] > 1:
        paths["dense_rewards"] = _save_png(
            plot_dense_rewards(R, title=f"iteration {trainer.iteration_done}"), os.path.join(folder, DENSE_REWARDS_FILE)
        )
    if sample_prompts:
        grid = sample_grid(trainer, sample_prompts)
        path = os.path.join(folder, SAMPLES_FILE)
        paths["samples"] = _save_png(Image.fromarray((grid.clamp(0, 1) * 255).round().byte().numpy()), path)
    return paths


def _save_png(image, path: str) -> str:
    """A PIL image as a PNG file, atomically."""
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def training_work(
    config: TrainConfig,
    pipe: FlowPipeline,
    reward: Callable,
    prompts: Sequence[str],
    *,
    lora_dir: str,
    lora_name: str,
    resume_checkpoint: str | None = None,
    sample_prompts: Sequence[str] = (),
    eval_prompts: Sequence[str] = (),
    eval_rewards: dict[str, Callable] | None = None,
) -> Callable:
    """The job's work function `work(ctx)` (ctx: jobs.JobContext); `eval_prompts` and `eval_rewards` (name →
    reward) make the trainer's evaluations, scored by the training reward and each held-out reward."""
    lora_file_names(lora_dir, lora_name, 0)  # validate the name now

    def work(ctx) -> None:
        job_config = dataclasses.replace(config, out_dir=ctx.job.folder)
        holder = {}

        def on_event(event: dict) -> None:
            ctx.emit(event)
            if event["type"] == "checkpoint":
                trainer = holder["trainer"]
                os.makedirs(lora_dir, exist_ok=True)
                numbered, latest = lora_file_names(lora_dir, lora_name, trainer.iteration_done)
                trainer.export_lora(numbered)
                trainer.export_lora(latest)
                ctx.emit({"type": "lora", "path": numbered, "latest": latest, "iteration": trainer.iteration_done})
                plots = save_status_plots(trainer, ctx.job.folder, sample_prompts)
                ctx.emit({"type": "plots", "iteration": trainer.iteration_done, **plots})

        trainer = Trainer(
            job_config,
            pipe,
            reward,
            list(prompts),
            list(eval_prompts),
            on_event=on_event,
            should_stop=ctx.should_stop,
            eval_rewards=dict(eval_rewards or {}),
        )
        holder["trainer"] = trainer
        if resume_checkpoint:
            trainer.load_checkpoint(resume_checkpoint)
            # the job continues its run: the history up to the checkpoint (the panel's curve from iteration 1)
            history = {"metrics": trainer.metrics, "evals": trainer.evals}
            ctx.emit({"type": "resumed", "iteration": trainer.iteration_done, "history": history})
        trainer.run()

    return work
