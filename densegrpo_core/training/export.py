"""The trained LoRA as a file: its metadata (base architecture, ψ, grid, mode, config hash, model info) and
the atomic export in ComfyUI's key format, plus the diffusers layout with `export_diffusers`."""

from __future__ import annotations

import json
import os

from ..models import lora


def lora_metadata(trainer) -> dict:
    """The metadata written into every LoRA file of `trainer`'s run."""
    config = trainer.config
    return {
        "base_arch": trainer.targets,
        "rank": config.lora_rank,
        "alpha": config.lora_alpha,
        "psi": json.dumps(trainer.psi.values),
        "reward": config.reward,
        "iteration": trainer.iteration_done,
        "advantage_mode": config.advantage_mode,
        "config_hash": config.hash(),
        "steps": config.steps,
        "shift": trainer.shift,
        "cfg_scale": trainer.cfg_scale,
        "grid": config.grid if isinstance(config.grid, str) else "explicit",
        **({"scheduler": config.scheduler} if config.scheduler else {}),
        "sigmas": json.dumps([round(t, 6) for t in trainer.tau.tolist()]),
        **{f"model_{k}": v for k, v in trainer.pipe.info.items() if k != "targets_note"},
        # why the LoRA targets are what they are, where no family record chose them (e.g. ComfyUI's LoRA key map)
        **({"targets_note": trainer.pipe.info["targets_note"]} if "targets_note" in trainer.pipe.info else {}),
    }


def export_lora(trainer, path: str) -> str:
    """Write `trainer`'s (EMA, if enabled) LoRA atomically in ComfyUI's key format."""
    with trainer.ema_weights():
        lora.save_lora(path, trainer.model, trainer.lora_metadata(), prefix=trainer.pipe.lora_prefix)
        if trainer.config.export_diffusers:
            lora.save_lora(
                os.path.splitext(path)[0] + "_diffusers.safetensors",
                trainer.model,
                trainer.lora_metadata(),
                prefix=trainer.pipe.lora_prefix,
                layout="diffusers",
            )
    return path
