"""Checkpoint and resume of a training run (docs/method.md §7): the folder `out_dir/checkpoint` holds the LoRA,
optimizer state, every rank's RNG state, the EMA, ψ, the config and the metrics so far. It is written in a
temporary folder and swapped in atomically; resuming from it continues the same curves."""

from __future__ import annotations

import json
import os
import shutil

import torch

from ..method.schedule import Psi
from ..models import lora
from ..util.atomic import atomic_write_text
from .config import check_resumable
from .distributed import gather_objects

CHECKPOINT_FORMAT = "densegrpo.checkpoint/1"


def save_checkpoint(trainer) -> str | None:
    """Atomic checkpoint folder `out_dir/checkpoint` of `trainer` (rank 0 writes it; other ranks return None)."""
    states = gather_objects(trainer.noise_gen.get_state(), trainer.world)
    if trainer.rank != 0:
        return None
    out = trainer.config.out_dir
    final, tmp = os.path.join(out, "checkpoint"), os.path.join(out, f".checkpoint.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        lora.save_lora(
            os.path.join(tmp, "lora.safetensors"),
            trainer.model,
            trainer.lora_metadata(),
            prefix=trainer.pipe.lora_prefix,
        )
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "iteration": trainer.iteration_done,
                "optimizer": trainer.optimizer.state_dict(),
                "prompt_gen": trainer.prompt_gen.get_state(),
                "noise_gens": states,
                "ema": trainer.ema,
                "optimizer_steps": trainer.optimizer_steps_done,
            },
            os.path.join(tmp, "state.pt"),
        )
        trainer.psi.save(os.path.join(tmp, "psi.json"))
        atomic_write_text(os.path.join(tmp, "config.json"), json.dumps(trainer.config.to_dict(), indent=1))
        atomic_write_text(
            os.path.join(tmp, "metrics.json"), json.dumps({"metrics": trainer.metrics, "evals": trainer.evals})
        )
        old = os.path.join(out, f".checkpoint.old{os.getpid()}")
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint(trainer, path: str) -> None:
    """Restore `trainer` from a checkpoint folder: same curves as an uninterrupted run."""
    state_path = os.path.join(path, "state.pt")
    if not os.path.isfile(state_path):
        raise FileNotFoundError(f"no checkpoint in {path!r} (expected {state_path})")
    state = torch.load(state_path, weights_only=True, map_location="cpu")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{state_path} is not a {CHECKPOINT_FORMAT} checkpoint")
    check_resumable(trainer.config, path)
    lora.load_lora(os.path.join(path, "lora.safetensors"), trainer.model, prefix=trainer.pipe.lora_prefix)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.prompt_gen.set_state(state["prompt_gen"])
    if len(state["noise_gens"]) != trainer.world:
        raise ValueError(
            f"checkpoint was written by {len(state['noise_gens'])} processes, resuming with {trainer.world}"
        )
    trainer.noise_gen.set_state(state["noise_gens"][trainer.rank])
    if state["ema"] is not None and trainer.ema is not None:
        for e, s in zip(trainer.ema, state["ema"]):
            e.copy_(s)
    trainer.iteration_done = int(state["iteration"])
    trainer.psi = Psi.load(os.path.join(path, "psi.json"))
    with open(os.path.join(path, "metrics.json")) as f:
        saved_metrics = json.load(f)
    trainer.metrics, trainer.evals = saved_metrics["metrics"], saved_metrics["evals"]
    trainer.optimizer_steps_done = int(  # checkpoints before the EMA schedule: the metrics' sum
        state.get("optimizer_steps", sum(m.get("optimizer_steps", 0) for m in trainer.metrics))
    )
    if trainer.rank == 0:
        atomic_write_text(
            os.path.join(trainer.config.out_dir, "metrics.jsonl"),
            "".join(json.dumps(m) + "\n" for m in trainer.metrics),
        )
