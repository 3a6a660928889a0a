"""Memory features of the trainer: gradient checkpointing of transformer blocks, offloading of the reward
model and decoder between stages, the optimizer's state size, and a meter of seconds and peak memory per stage.

None of this changes the math (docs/method.md §3-§7): checkpointing recomputes the same block activations in the
backward pass, offloading only moves weights, and the meter only observes. See docs/benchmarks.md for what
each feature saves and costs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
import types
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from ..models.families import block_list_names

# ModuleList attribute names that hold the transformer blocks: those the model families name
# (densegrpo_core.models.families: toy `blocks`, ComfyUI MMDiT `joint_blocks`, ComfyUI Flux `double_blocks` and
# `single_blocks`, diffusers `transformer_blocks` / `single_transformer_blocks`), and the generic `layers`.
BLOCK_LIST_NAMES = (*block_list_names(), "layers")
_CHECKPOINTED = "_densegrpo_checkpointed"  # marks a block whose forward is wrapped
_PRIOR_FORWARD = "_densegrpo_prior_forward"  # an instance-level forward that was there before wrapping


# ------------------------------------------------------------------------- gradient checkpointing
def find_block_lists(model: nn.Module, block_lists: str | Sequence[str] = "auto") -> dict[str, nn.ModuleList]:
    """The ModuleLists of transformer blocks: "auto" finds the outermost ones named in BLOCK_LIST_NAMES — of those,
    the shallowest (Chroma's approximator keeps its MLPs in a nested `layers` list beside the top-level
    double/single blocks) — or give dotted module paths (e.g. ["joint_blocks"] or ["double_blocks", "single_blocks"]).

    ValueError naming what was searched when nothing is found or a path is not a ModuleList.
    """
    modules = dict(model.named_modules())
    if block_lists == "auto":
        found: dict[str, nn.ModuleList] = {}
        for name, module in modules.items():  # parents come before children in named_modules
            inside = any(name.startswith(f"{outer}.") for outer in found)
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES and not inside:
                found[name] = module
        if found:
            depth = min(name.count(".") for name in found)
            found = {name: module for name, module in found.items() if name.count(".") == depth}
        if not found:
            raise ValueError(
                f"no transformer block list found in {type(model).__name__} (looked for ModuleLists "
                f"named {', '.join(BLOCK_LIST_NAMES)}); pass block_lists=[<module path>, ...]"
            )
        return found
    if isinstance(block_lists, str):
        block_lists = [block_lists]
    lists = {}
    for path in block_lists:
        if not isinstance(modules.get(path), nn.ModuleList):
            raise ValueError(f"{type(model).__name__} has no ModuleList at {path!r}")
        lists[path] = modules[path]
    return lists


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """The block's own forward, run under torch.utils.checkpoint when gradients are being recorded."""
    prior = self.__dict__.get(_PRIOR_FORWARD)
    inner = prior if prior is not None else types.MethodType(type(self).forward, self)
    if not torch.is_grad_enabled():  # rollouts and the KL reference: nothing to save, run as is
        return inner(*args, **kwargs)
    # dict arguments are copied: the recompute must see them as they were, even if the caller changes them
    # after the call (ComfyUI's Flux sets transformer_options["block_index"] before every block)
    kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
    args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
    return torch.utils.checkpoint.checkpoint(inner, *args, use_reentrant=False, **kwargs)


def enable_gradient_checkpointing(model: nn.Module, block_lists: str | Sequence[str] = "auto") -> list[str]:
    """Recompute each transformer block's activations in the backward pass instead of keeping them.

    Wraps the forward of every block in the found lists (see `find_block_lists`): under autograd the block
    runs inside `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`, so only its inputs are kept;
    under `torch.no_grad()` it runs unchanged. Works with peft LoRA layers inside the blocks (before or after
    injection) and survives `copy.deepcopy` (the wrapper is a bound method). Idempotent; undo with
    `disable_gradient_checkpointing`. Returns the names of the wrapped blocks.
    """
    names = []
    for list_name, blocks in find_block_lists(model, block_lists).items():
        for i, block in enumerate(blocks):
            if not block.__dict__.get(_CHECKPOINTED, False):
                if "forward" in block.__dict__:
                    block.__dict__[_PRIOR_FORWARD] = block.__dict__["forward"]
                block.forward = types.MethodType(_checkpointed_forward, block)
                block.__dict__[_CHECKPOINTED] = True
            names.append(f"{list_name}.{i}")
    return names


def disable_gradient_checkpointing(model: nn.Module) -> int:
    """Restore the original forward of every checkpointed block in the model; returns how many were restored."""
    restored = 0
    for module in model.modules():
        if module.__dict__.pop(_CHECKPOINTED, False):
            del module.__dict__["forward"]
            prior = module.__dict__.pop(_PRIOR_FORWARD, None)
            if prior is not None:
                module.forward = prior
            restored += 1
    return restored


def is_checkpointed(module: nn.Module) -> bool:
    return bool(module.__dict__.get(_CHECKPOINTED, False))


# ------------------------------------------------------------------------------------- offloading
def _collect_modules(obj, depth: int, seen: set, out: list) -> None:
    """Torch modules reachable from obj: itself, a bound method's owner, a partial's function and arguments,
    a closure's cells, containers, and plain objects' attributes, `depth` levels deep."""
    if id(obj) in seen or depth < 0 or obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor)):
        return
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        out.append(obj)
        return
    if isinstance(obj, types.MethodType):
        children = [obj.__self__]
    elif isinstance(obj, functools.partial):
        children = [obj.func, *obj.args, *obj.keywords.values()]
    elif isinstance(obj, types.FunctionType):
        children = [c.cell_contents for c in (obj.__closure__ or ()) if _cell_filled(c)]
    elif isinstance(obj, (list, tuple, set)):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, types.ModuleType) or not hasattr(obj, "__dict__"):
        children = []
    else:
        children = list(vars(obj).values())
    for child in children:
        _collect_modules(child, depth - 1, seen, out)


def _cell_filled(cell) -> bool:
    try:
        _ = cell.cell_contents
        return True
    except ValueError:  # an empty cell (a variable not yet bound)
        return False


def offloadable_modules(*objs, exclude: Iterable[nn.Module] = (), depth: int = 3) -> list[nn.Module]:
    """The torch modules inside reward models / decoders that may be moved: none of them is, contains or lies
    inside an excluded module (the diffusion network), and none lies inside another found module."""
    found: list[nn.Module] = []
    seen: set = set()
    for obj in objs:
        _collect_modules(obj, depth, seen, found)
    banned = {id(m) for ex in exclude for m in ex.modules()}
    keep = [m for m in found if not any(id(sub) in banned for sub in m.modules())]
    inner = {id(sub) for m in keep for sub in m.modules() if sub is not m}
    return [m for m in keep if id(m) not in inner]


def _module_device(module: nn.Module) -> torch.device | None:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


@contextlib.contextmanager
def offloaded(
    *objs, to: torch.device | str = "cpu", exclude: Iterable[nn.Module] = (), enabled: bool = True
) -> Iterator[list[nn.Module]]:
    """Move the torch modules of the given objects (reward models, decoders) to `to` (the CPU) inside the
    block and back to where each was afterwards, also on errors.

    Objects may be modules, objects holding modules (a reward class, a VAE wrapper), bound methods, partials
    or closures over them; an object with `.to()` and `.device` but no modules is moved through those. Plain
    callables without any are left alone, so offloading is always safe to ask for. Yields the moved modules.
    """
    to = torch.device(to)
    if not enabled:
        yield []
        return
    moved: list[tuple[object, torch.device]] = []
    modules = offloadable_modules(*objs, exclude=exclude)
    for module in modules:
        device = _module_device(module)
        if device is not None and device != to:
            module.to(to)
            moved.append((module, device))
    for obj in objs:
        if (
            not modules
            and not isinstance(obj, nn.Module)
            and callable(getattr(obj, "to", None))
            and isinstance(getattr(obj, "device", None), (torch.device, str))
            and torch.device(obj.device) != to
        ):
            device = torch.device(obj.device)
            obj.to(to)
            moved.append((obj, device))
    try:
        yield [m for m, _ in moved]
    finally:
        for obj, device in reversed(moved):
            obj.to(device)


# ------------------------------------------------------------------------------------------- sizes
def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (moments, quantisation statistics)."""
    return sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct tensors (shared storage counted once per tensor object)."""
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------------------------ stage meter
def _cpu_peak_bytes(prof) -> int:
    """Peak of (allocated - freed) CPU bytes over a profiled window, from the profiler's memory events."""
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 inside the block: the profiler's C++ side logs every start and stop there
    (its KINETO_LOG_LEVEL is read only when torch is loaded)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class StageMeter:
    """Seconds and peak memory of the named stages of one iteration (rollout, reward, update).

    Seconds are wall-clock, with a CUDA synchronize at both ends on CUDA. Memory, when `memory` is on:
    - CUDA: `torch.cuda.max_memory_allocated` over the stage (the peak is reset at its start); records the
      absolute peak `<stage>_peak_bytes` and `<stage>_peak_delta_bytes`, the peak above what was allocated when
      the stage began (weights, optimizer state, stored rollouts). Nearly free, so on by default.
    - CPU: torch's profiler with `profile_memory=True` records every CPU tensor allocation and free of the
      stage; `<stage>_peak_delta_bytes` is the peak of their running sum, i.e. the most tensor memory the
      stage held above its start. Counts torch tensors only (not Python objects, not allocator caching), which
      is what max_memory_allocated counts on CUDA. The profiler slows the stage, so it is off by default on
      CPU; benchmarks time some iterations without it and profile a separate one.
    """

    def __init__(self, device: torch.device | str = "cpu", memory: bool | None = None):
        self.device = torch.device(device)
        self.memory = self.device.type == "cuda" if memory is None else memory
        self.last: dict[str, float] = {}  # the figures of the stages since `reset`

    def reset(self) -> None:
        self.last = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the block as stage `name`: adds `<name>_s` (and the memory figures) to `last`."""
        self._sync()
        prof = None
        if self.memory and self.device.type == "cuda":
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.memory:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            with _quiet_stderr():
                prof.__enter__()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.last[f"{name}_s"] = time.perf_counter() - t0
            if prof is not None:
                with _quiet_stderr():
                    prof.__exit__(None, None, None)
                self.last[f"{name}_peak_delta_bytes"] = _cpu_peak_bytes(prof)
            elif self.memory:
                peak = torch.cuda.max_memory_allocated(self.device)
                self.last[f"{name}_peak_bytes"] = peak
                self.last[f"{name}_peak_delta_bytes"] = peak - base


def parse_on_off(text: str) -> list[bool]:
    """ "on" → [True], "off" → [False], "both" / "on,off" → [False, True] (CLI helper)."""
    words = [w for w in re.split(r"[,\s]+", text.strip().lower()) if w]
    if words == ["both"]:
        return [False, True]
    values = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
    if not words or any(w not in values for w in words):
        raise ValueError(f"expected on, off or both, got {text!r}")
    return sorted({values[w] for w in words})
