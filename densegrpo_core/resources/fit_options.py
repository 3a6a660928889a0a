"""What would make a run fit: the estimator (estimate.py) asked again with one setting changed.

`fitting_options(config, info, device)` → the single changes that bring the predicted peak under the free
memory (fp8 base weights, gradient checkpointing, a smaller train_batch, group_size or max_batch), each with
its estimate; when no single change is enough, one combined change (fp8 + checkpointing + the largest batch
sizes that then fit), or nothing when even that does not fit. The ComfyUI Train node names these when it
refuses a run; the names are TrainConfig fields plus "base_dtype".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .estimate import DeviceInfo, Estimate, ModelInfo, estimate, fits, with_base_dtype


@dataclass
class Option:
    changes: dict  # {"base_dtype": "float8_e4m3fn", "grad_checkpointing": True, "group_size": 4, ...}
    estimate: Estimate
    notes: list[str] = field(default_factory=list)


def _try(config, info: ModelInfo, device: DeviceInfo, changes: dict, margin: float, **kw) -> Estimate | None:
    fields = {k: v for k, v in changes.items() if k != "base_dtype"}
    try:
        c = dataclasses.replace(config, **fields)
    except (ValueError, TypeError):
        return None
    i = with_base_dtype(info, changes["base_dtype"]) if "base_dtype" in changes else info
    est = estimate(c, i, device, **kw)
    return est if fits(est, device, margin) else None


def _largest(config, info, device, base: dict, name: str, low: int, margin: float, **kw):
    """The largest value of integer field `name` in [low, current) that fits with `base` changes (halving)."""
    value = getattr(config, name) // 2
    while value >= low:
        est = _try(config, info, device, {**base, name: value}, margin, **kw)
        if est is not None:
            return value, est
        value //= 2
    return None


def fitting_options(
    config, info: ModelInfo, device: DeviceInfo, margin: float = 0.9, fp8: str = "float8_e4m3fn", **estimate_kw
) -> list[Option]:
    """Changes of `config` (and the base weight dtype) whose estimate fits `margin` of the device's free memory."""
    out = []
    if info.weight_bytes > 1:
        est = _try(config, info, device, {"base_dtype": fp8}, margin, **estimate_kw)
        if est is not None:
            out.append(Option({"base_dtype": fp8}, est))
    if not config.grad_checkpointing:
        est = _try(config, info, device, {"grad_checkpointing": True}, margin, **estimate_kw)
        if est is not None:
            out.append(Option({"grad_checkpointing": True}, est))
    for name, low in (("train_batch", 1), ("group_size", 2), ("max_batch", 1)):
        found = _largest(config, info, device, {}, name, low, margin, **estimate_kw)
        if found is not None:
            out.append(Option({name: found[0]}, found[1]))
    if out:
        return out
    base = {}
    if info.weight_bytes > 1:
        base["base_dtype"] = fp8
    if not config.grad_checkpointing:
        base["grad_checkpointing"] = True
    for name, low in (("train_batch", 1), ("max_batch", 1), ("group_size", 2)):
        est = _try(config, info, device, base, margin, **estimate_kw)
        if est is not None:
            return [Option(base, est, ["together"])]
        found = _largest(config, info, device, base, name, low, margin, **estimate_kw)
        if found is not None:
            return [Option({**base, name: found[0]}, found[1], ["together"])]
        base[name] = low
    est = _try(config, info, device, base, margin, **estimate_kw)
    return [Option(base, est, ["together"])] if est is not None else []
