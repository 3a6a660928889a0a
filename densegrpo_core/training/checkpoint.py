"""Checkpoint and resume of a training run (docs/method.md §7, docs/robustness.md): LoRA, optimizer state, every
rank's RNG state, the EMA, ψ, the config and the metrics so far; resuming from one continues the same curves.

Layout in `out_dir` (docs/robustness.md): every save is a complete folder `checkpoint-000012/` (the iteration;
`checkpoint-000012.1/` if that name is taken), and `checkpoint` is a symbolic link to the newest one. A save
writes `.checkpoint-000012.tmp<pid>/`, flushes every file to disk, renames the folder to its numbered name,
then replaces the link atomically (a new link renamed over the old), and only then deletes the older
checkpoints (each renamed to `.checkpoint.trash…` first, so a folder with a checkpoint's name is never half
deleted). A process killed at any instant leaves `checkpoint` naming a complete checkpoint (or, before the
first save's link exists, a complete numbered folder): `resolve_checkpoint` finds it, so `--resume
out_dir/checkpoint` and `--resume out_dir` always continue from the newest complete save.

Where symbolic links cannot be made (Windows without developer mode) the numbered folders alone are kept and
`resolve_checkpoint` picks the newest; a `checkpoint/` folder written by an older version still loads and is
replaced by a link at the next save.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil

import torch

from ..method.schedule import Psi
from ..models import lora
from ..util.atomic import WriteFailed, atomic_write_text
from .config import check_resumable
from .distributed import gather_objects

CHECKPOINT_FORMAT = "densegrpo.checkpoint/1"
POINTER = "checkpoint"  # out_dir/checkpoint: the link to the newest complete checkpoint
FILES = ("lora.safetensors", "state.pt", "psi.json", "config.json", "metrics.json")  # what a checkpoint holds
_NUMBERED = re.compile(r"^checkpoint-(\d+)(?:\.(\d+))?$")


def _numbered_key(name: str) -> tuple[int, int] | None:
    m = _NUMBERED.match(name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def is_complete(folder: str) -> bool:
    """Whether `folder` holds every file of a checkpoint."""
    return all(os.path.isfile(os.path.join(folder, f)) for f in FILES)


def complete_checkpoints(out_dir: str) -> list[str]:
    """The complete numbered checkpoint folders in `out_dir`, newest (highest iteration) first."""
    try:
        names = os.listdir(out_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(key, n) for n in names if (key := _numbered_key(n)) is not None]
    return [
        os.path.join(out_dir, n)
        for _, n in sorted(found, reverse=True)
        if os.path.isdir(os.path.join(out_dir, n)) and is_complete(os.path.join(out_dir, n))
    ]


def resolve_checkpoint(path: str) -> str:
    """The checkpoint folder `path` means: a checkpoint folder itself (or the `checkpoint` link to one); an
    out_dir (its `checkpoint`, else its newest complete numbered checkpoint); or `out_dir/checkpoint` whose
    link is missing or broken (the newest complete numbered checkpoint beside it). FileNotFoundError naming
    the path otherwise."""
    path = os.path.normpath(path)
    if is_complete(path):
        return path
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "state.pt")):  # an out_dir
        pointer = os.path.join(path, POINTER)
        if is_complete(pointer):
            return pointer
        found = complete_checkpoints(path)
        if found:
            return found[0]
    elif os.path.basename(path) == POINTER and not os.path.exists(path):  # the link is missing or broken
        found = complete_checkpoints(os.path.dirname(path) or ".")
        if found:
            return found[0]
    if os.path.isfile(os.path.join(path, "state.pt")):
        missing = [f for f in FILES if not os.path.isfile(os.path.join(path, f))]
        raise FileNotFoundError(f"checkpoint {path!r} is incomplete: {', '.join(missing)} missing")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileNotFoundError(f"--resume {path!r} is a file; expected a checkpoint folder or an out_dir")
    raise FileNotFoundError(
        f"no checkpoint in {path!r} (expected a folder with {', '.join(FILES)}, an out_dir holding "
        f"checkpoint/ or checkpoint-NNNNNN/; a run stopped before its first save has none: start it again)"
    )


def _fsync(path: str) -> None:
    """Flush a file, or a folder's entries, to disk (folders: POSIX only)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder on Windows
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(out: str, iteration: int) -> str:
    name = f"checkpoint-{iteration:06d}"
    n = 0
    while os.path.lexists(os.path.join(out, name if n == 0 else f"{name}.{n}")):
        n += 1
    return name if n == 0 else f"{name}.{n}"


def _write_files(trainer, folder: str, states: list) -> None:
    lora.save_lora(
        os.path.join(folder, "lora.safetensors"),
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
        os.path.join(folder, "state.pt"),
    )
    trainer.psi.save(os.path.join(folder, "psi.json"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(json.dumps(trainer.config.to_dict(), indent=1))
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        f.write(json.dumps({"metrics": trainer.metrics, "evals": trainer.evals}))
    for name in FILES:
        _fsync(os.path.join(folder, name))
    _fsync(folder)


def _point_to(out: str, name: str) -> bool:
    """Make out/checkpoint a link to `name`, replacing the old link in one rename; False where links
    cannot be made. A `checkpoint/` folder of an older version is set aside first (the numbered `name` is
    complete by then, so a kill in between still leaves a checkpoint `resolve_checkpoint` finds)."""
    pointer, tmp = os.path.join(out, POINTER), os.path.join(out, f".checkpoint.link{os.getpid()}")
    if os.path.isdir(pointer) and not os.path.islink(pointer):
        os.rename(pointer, os.path.join(out, f".checkpoint.legacy{os.getpid()}"))
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.symlink(name, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        return False
    os.replace(tmp, pointer)
    _fsync(out)
    return True


def _prune(out: str, keep: str) -> None:
    """Delete every checkpoint but `keep` and the leftovers of interrupted saves (renamed first, then deleted)."""
    pid = os.getpid()
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name == keep or name == POINTER or name.startswith(f".checkpoint.trash{pid}-"):
            continue
        if _numbered_key(name) is not None or name.startswith(".checkpoint"):
            if os.path.isdir(path) and not os.path.islink(path):
                trash = os.path.join(out, f".checkpoint.trash{pid}-{name}")
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
    for name in os.listdir(out):
        if name.startswith(f".checkpoint.trash{pid}-"):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)


def save_checkpoint(trainer) -> str | None:
    """Write a new complete checkpoint of `trainer`, point `out_dir/checkpoint` at it, delete the older ones
    (rank 0 writes; other ranks return None). → the path that reaches it (out_dir/checkpoint, or the
    numbered folder where links cannot be made)."""
    states = gather_objects(trainer.noise_gen.get_state(), trainer.world, what="checkpoint RNG states")
    if trainer.rank != 0:
        return None
    out = trainer.config.out_dir
    name = _free_name(out, trainer.iteration_done)
    tmp = os.path.join(out, f".{name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        _write_files(trainer, tmp, states)
        os.rename(tmp, os.path.join(out, name))  # complete under its own name from here on
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, Exception):
            raise
        raise WriteFailed(out, e, "the checkpoint in", _resume_hint(out)) from e
    try:
        linked = _point_to(out, name)
        _prune(out, keep=name)
    except OSError as e:
        raise WriteFailed(out, e, "the checkpoint link in", _resume_hint(out)) from e
    return os.path.join(out, POINTER if linked else name)


def _resume_hint(out: str) -> str:
    """'; the last checkpoint (iteration k) is intact: ...' for a failed write in `out`."""
    try:
        last = resolve_checkpoint(out)
    except FileNotFoundError:
        return "; there is no earlier checkpoint: fix the cause and start the run again"
    return f"; the last complete checkpoint {last!r} is intact: fix the cause, then resume with --resume {out!r}"


def load_checkpoint(trainer, path: str) -> str:
    """Restore `trainer` from the checkpoint `path` means (resolve_checkpoint): same curves as an uninterrupted
    run. → the folder it loaded."""
    path = resolve_checkpoint(path)
    state_path = os.path.join(path, "state.pt")
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
        write_logs(trainer)
    return path


def write_logs(trainer) -> None:
    """Rewrite out_dir/metrics.jsonl (and evals.jsonl) atomically from the trainer's records: a resumed or
    restarted run's logs hold exactly its history, whatever an interrupted process appended."""
    out = trainer.config.out_dir
    atomic_write_text(os.path.join(out, "metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in trainer.metrics))
    evals = os.path.join(out, "evals.jsonl")
    if trainer.evals or os.path.exists(evals):
        atomic_write_text(evals, "".join(json.dumps(e) + "\n" for e in trainer.evals))
