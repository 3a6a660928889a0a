"""Device memory of a background training job inside ComfyUI (docs/architecture.md, "ComfyUI background training",
[revised]): the diffusion weights are held once on the device, the job's memory is reserved from ComfyUI's
model management, and a run that cannot fit is refused naming what would make it fit.

- **Weights once.** The Train node copies the patched weights off the device (comfy_training), then
  `offload_comfy_copy` unloads ComfyUI's own copy through its model management (`LoadedModel.model_unload`,
  as `free_memory` does: patches removed, weights back on the offload device) and only then moves the job's
  copy onto the device. ComfyUI's MODEL stays usable: the next prompt that needs it loads it as ComfyUI
  always does.
- **Reservation.** While the job trains, `MemoryReservation` adds the job's estimated memory beyond the
  weights it already holds (LoRA, optimizer state, its largest stage: `Estimate.reserve_bytes`) to
  `comfy.model_management.EXTRA_RESERVED_VRAM`. ComfyUI subtracts `extra_reserved_memory()` in every
  `load_models_gpu` (`minimum_inference_memory`, the low-VRAM budget), so a concurrent prompt frees cached
  models or loads in low-VRAM mode instead of taking the memory the job's next stage needs. The job's
  weights are real allocations, already outside ComfyUI's free memory, so they are not reserved twice. The
  reservation is released when the job's work returns: finished, failed or stopped.
- **Interrupts.** ComfyUI's ops call `throw_exception_if_processing_interrupted()` in every forward (`comfy.ops
  .run_every_op`), which would let a training thread swallow the Cancel of a prompt and die of it. The job
  thread is marked, and `run_every_op` skips the check on marked threads only.

Everything here that calls ComfyUI's model management runs on the executor thread (the Train node's
execute); the job thread only adds and subtracts its reservation under this module's lock.
"""

from __future__ import annotations

import threading

from . import comfy_bridge as bridge

_lock = threading.Lock()
_local = threading.local()
_held: dict[int, int] = {}  # id(reservation) -> bytes, for the reservations held now


class MemoryReservation:
    """`nbytes` held back from ComfyUI's model management between take() and release() (both idempotent)."""

    def __init__(self, nbytes: float):
        self.nbytes = max(0, int(nbytes))
        self.held = False

    def take(self) -> "MemoryReservation":
        import comfy.model_management as mm

        with _lock:
            if not self.held:
                mm.EXTRA_RESERVED_VRAM += self.nbytes
                _held[id(self)] = self.nbytes
                self.held = True
        return self

    def release(self) -> None:
        import comfy.model_management as mm

        with _lock:
            if self.held:
                mm.EXTRA_RESERVED_VRAM -= self.nbytes
                _held.pop(id(self), None)
                self.held = False


def reserved_bytes() -> int:
    """Bytes the DenseGRPO jobs running now hold reserved."""
    with _lock:
        return sum(_held.values())


def comfy_copies(model_patcher) -> list:
    """ComfyUI's loaded-model entries holding this MODEL's weights (it or a clone sharing its BaseModel)."""
    import comfy.model_management as mm

    return [
        lm
        for lm in mm.current_loaded_models
        if lm.model is not None and (lm.model is model_patcher or model_patcher.is_clone(lm.model))
    ]


def comfy_loaded_bytes(model_patcher) -> int:
    """Device bytes of ComfyUI's own loaded copy of this MODEL (0 when it is offloaded)."""
    return sum(int(lm.model_loaded_memory()) for lm in comfy_copies(model_patcher))


def offload_comfy_copy(model_patcher) -> int:
    """Unload ComfyUI's copy of this MODEL from its device through its model management (executor thread only):
    patches removed, weights on the offload device, the entry off `current_loaded_models`. Returns the
    number of entries unloaded."""
    import comfy.model_management as mm

    entries = comfy_copies(model_patcher)
    for lm in entries:
        lm.model_unload()
        mm.current_loaded_models.remove(lm)
    if entries:
        mm.soft_empty_cache()
    return len(entries)


def _install_interrupt_guard() -> None:
    import comfy.ops

    with _lock:
        if getattr(comfy.ops.run_every_op, "_densegrpo_guard", False):
            return
        original = comfy.ops.run_every_op

        def run_every_op():
            if not getattr(_local, "job", False):
                original()

        run_every_op._densegrpo_guard = True
        comfy.ops.run_every_op = run_every_op


def job_work(work, reserve_bytes: float):
    """Wrap a job's work function: the thread is marked as a job thread (ComfyUI's per-op interrupt check skips
    it) and `reserve_bytes` are reserved from ComfyUI's model management while the work runs."""
    _install_interrupt_guard()
    reservation = MemoryReservation(reserve_bytes)

    def run(ctx) -> None:
        _local.job = True
        reservation.take()
        try:
            ctx.emit({"type": "memory", "reserved_bytes": reservation.nbytes})
            work(ctx)
        finally:
            reservation.release()
            _local.job = False

    run.reservation = reservation
    return run


# ----------------------------------------------------------------------------------------- the check
def weight_dtypes(model) -> tuple[str, str | None]:
    """(storage dtype of the diffusion weights, e.g. "float8_e4m3fn"; the dtype ComfyUI computes them in when it
    casts them per layer, or None)."""
    from densegrpo_core.resources.estimate import dtype_name

    base = model.model
    sizes: dict[str, int] = {}
    for p in base.diffusion_model.parameters():
        sizes[dtype_name(p.dtype)] = sizes.get(dtype_name(p.dtype), 0) + p.numel()
    cast = getattr(base, "manual_cast_dtype", None)
    return max(sizes, key=sizes.get), (dtype_name(cast) if cast is not None else None)


def _option_text(changes: dict) -> str:
    words = {
        "base_dtype": lambda v: f"load the model with weight_dtype {v.replace('float8', 'fp8')}",
        "grad_checkpointing": lambda v: "gradient_checkpointing on",
    }
    return " + ".join(words.get(k, lambda v, k=k: f"{k} {v}")(v) for k, v in changes.items())


def check_memory(model, config, latent_shape, context_tokens: int, allow: bool, node: str):
    """Estimate peak memory and time per iteration (densegrpo_core.resources.estimate) before anything is copied; refuse
    when the peak exceeds the memory the job can have on the model's device (free memory, plus ComfyUI's own
    copy of this MODEL that the job will offload, minus what other jobs hold reserved), unless allowed, naming
    the settings that would make it fit."""
    import comfy.model_management as mm

    from densegrpo_core.resources.estimate import DeviceInfo, estimate, fits, model_info
    from densegrpo_core.resources.fit_options import fitting_options

    from .comfy_training import comfy_family  # (comfy_training imports this module)

    device = model.load_device
    _, cast = weight_dtypes(model)
    info = model_info(
        model.model.diffusion_model,
        tuple(latent_shape),
        context_tokens=context_tokens,
        lora_targets=comfy_family(model.model, node).comfy.preset,  # Qwen-Image's names also match diffusers'
        compute_dtype=cast,
    )
    free = int(mm.get_free_memory(device)) - reserved_bytes()
    if device.type != "cpu":  # offloading ComfyUI's copy frees device memory
        free += comfy_loaded_bytes(model)
    dev = DeviceInfo(device.type, str(device), int(mm.get_total_memory(device)), max(0, free))
    est = estimate(config, info, dev)
    if not fits(est, dev) and not allow:
        options = fitting_options(config, info, dev)
        hint = (
            (
                "; it would fit with "
                + "; or ".join(f"{_option_text(o.changes)} (~{o.estimate.peak_bytes / 2**30:.1f} GiB)" for o in options)
            )
            if options
            else "; no smaller setting fits: use a device with more memory"
        )
        raise bridge.input_error(
            node,
            "allow_over_memory",
            f"is off and the estimated peak memory ({est.summary()}) exceeds 90% of the free "
            f"{dev.free_bytes / 2**30:.1f} GiB on {device}{hint}; or allow it",
        )
    return est
