"""Peak memory and seconds per iteration of a training run, predicted before it starts.

`estimate(config, model_info(model, latent_shape), device_info(device))` → Estimate(peak_bytes,
seconds_per_iteration, breakdown). The model is counted, not run: parameters, LoRA size, image and text
tokens, width and depth. Batch arithmetic follows the trainer (docs/method.md §9 for the NFE counts):

    B                 = prompts_per_iteration · G trajectories; CFG doubles every forward's rows
    rollout           B · NFE rows, NFE = T(T+1)/2 (dense modes, fused sweep) or T (flow_grpo); one forward
                      call holds at most max_batch rows; latents kept: (2T+1)·B (chain + ODE endpoints)
    decode + reward   B·(T+1) images (dense) or B, reward_batch at a time
    update            ⌊train_fraction·T⌋ steps × B rows, train_batch rows with autograd at once; each step is a
                      forward with grad, its backward and a no-grad reference forward (+ a recompute with
                      gradient checkpointing)

Memory = weights (bytes per base parameter: 4 fp32, 2 bf16/fp16, 1 fp8, `BASE_DTYPE_BYTES`) + LoRA (fp32) +
optimizer state + the largest stage (activations ∝ rows · tokens · width · activation bytes, times depth when
autograd keeps every block). Weights stored in another dtype than the one the network computes in (fp8 base
weights, cast per layer to bf16/fp32 as ComfyUI's ops do) add their cast copies: one layer's at a time in a
no-grad forward, one block's under checkpointing, every block's in an update without checkpointing (autograd
keeps the cast weight of each Linear for the input gradient). Time = forward FLOPs / an effective FLOP/s.
The proportionality constants are fitted to measurements (`app.benchmark.fit.fit_constants`, from
`python -m densegrpo_core bench`): the CPU ones below were measured on this project's CPU; the CUDA ones are
placeholders until `bench/gpu_sd35m.py` is run on a GPU, which refits them. They are data: `estimate_constants.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..method.advantages import advantage_mode
from ..method.rollout import predicted_nfe
from ..method.window import completion_indices, needed_reward_columns
from ..util.atomic import atomic_write_json


@dataclass
class Constants:
    act_infer: float  # no-grad forward: peak transient bytes per (row · token · width · activation byte)
    act_train: float  # forward with grad, no checkpointing: kept bytes per (row·token·width·block·act. byte)
    act_ckpt: float  # the same with checkpointing (block inputs kept; one block recomputed at a time)
    latent_copies: float  # rollout: latent-sized tensors alive per stored latent (cat, velocity, step copies)
    flops_per_s: float  # effective forward FLOP/s of the diffusion network
    train_cost: float  # a forward with grad plus its backward, in forward passes
    reward_s_per_image: float  # decode + reward seconds per image
    reward_bytes_per_image: float  # decode + reward peak bytes per image of a reward batch
    source: str = ""  # what measured them


CONSTANTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "estimate_constants.json")
CONSTANTS_FORMAT = "densegrpo.estimate_constants/1"


def constants_for(kind: str, path: str = CONSTANTS_FILE) -> Constants:
    """The fitted constants of a device kind ("cpu" or "cuda"), read from estimate_constants.json. The CUDA
    ones are placeholders (their `source` says so) until bench/gpu_sd35m.py refits them on a GPU."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("format") != CONSTANTS_FORMAT:
        raise ValueError(f"{path} is not a {CONSTANTS_FORMAT} file")
    return Constants(**data["cuda" if kind == "cuda" else "cpu"])


# ----------------------------------------------------------------------------------------- model
@dataclass
class ModelInfo:
    params: int  # base (frozen) parameters of the diffusion network
    weight_bytes: float  # bytes per base parameter (2 for bf16/fp16 weights, 4 for fp32)
    buffer_bytes: int  # bytes of the network's buffers (e.g. MMDiT's 384×384 position table)
    lora_params_per_rank: int  # Σ (in + out) over the LoRA target layers: LoRA parameters = rank · this
    width: int  # hidden size D
    depth: int  # transformer blocks
    tokens: int  # image tokens per latent (H·W / patch²)
    context_tokens: int  # text tokens attending jointly with the image (0 if text enters as a vector)
    latent_elems: int  # elements of one latent (C·H·W)
    flops_per_row: float  # FLOPs of one forward for one latent (one row, no CFG)
    compute_bytes: int = 0  # bytes of the dtype the network computes in (its weights' dtype, or the dtype fp8
    # weights are cast to); 0 = unknown: the config's (2 under bf16 autocast, else 4)
    block_params: int = 0  # base parameters inside the transformer blocks
    cast_params: int = 0  # block parameters stored in another dtype than the compute dtype (fp8 weights):
    # cast per layer for every forward
    largest_layer_params: int = 0  # weights of the largest Linear in the blocks (one layer's cast at a time)

    @property
    def sequence(self) -> int:
        return self.tokens + self.context_tokens


_MODULATION = re.compile(r"adaLN|(^|[._])(img_|txt_)?mod(ulation)?([._]|$)")  # per-row, not per-token, linears
_TEXT_STREAM = re.compile(r"context_block|(^|[._])txt_")
_IMAGE_STREAM = re.compile(r"x_block|(^|[._])img_")


def _linear_shapes(module: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) of every Linear (peft LoRA layers counted once, by their base layer's shape)."""
    shapes = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and not re.search(r"(^|\.)(base_layer|lora_[AB]\.\w+)$", name):
            shapes[name] = (m.in_features, m.out_features)
        elif hasattr(m, "base_layer") and isinstance(m.base_layer, nn.Linear):
            shapes[name] = (m.base_layer.in_features, m.base_layer.out_features)
    return shapes


def _lora_params_per_rank(model: nn.Module, targets: str) -> int:
    from ..models.lora import lora_targets

    injected = {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if hasattr(m, "lora_A") and hasattr(m, "in_features")
    }
    if injected:
        return sum(i + o for i, o in injected.values())
    shapes = _linear_shapes(model)
    return sum(sum(shapes[n]) for n in lora_targets(model, targets))


def forward_flops(model: nn.Module, blocks: dict, tokens: int, context_tokens: int, width: int) -> float:
    """Matmul FLOPs of one forward for one latent: 2·in·out per token for every Linear in the blocks (text-
    stream layers see the text tokens, image-stream layers the image tokens, modulation layers one row),
    plus 4·L²·D for each block's attention over the joint sequence L."""
    seq = tokens + context_tokens
    flops = 0.0
    for block_list in blocks.values():
        for name, (i, o) in _linear_shapes(block_list).items():
            rows = (
                1
                if _MODULATION.search(name)
                else context_tokens
                if _TEXT_STREAM.search(name)
                else tokens
                if _IMAGE_STREAM.search(name)
                else seq
            )
            flops += 2.0 * i * o * rows
        flops += 4.0 * seq * seq * width * len(block_list)
    return flops


BASE_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}
FLOAT8_DTYPES = ("float8_e4m3fn", "float8_e5m2")


def dtype_name(dtype) -> str:
    """ "bfloat16" for torch.bfloat16 (or the string itself)."""
    return str(dtype).replace("torch.", "")


def with_base_dtype(info: ModelInfo, dtype, compute_dtype="bfloat16") -> ModelInfo:
    """The same network with its base weights stored in `dtype` ("float32", "bfloat16", "float16",
    "float8_e4m3fn", "float8_e5m2" or the torch dtype): fp8 weights are 1 byte per parameter and computed in
    `compute_dtype`, cast per layer."""
    name = dtype_name(dtype)
    if name not in BASE_DTYPE_BYTES:
        raise ValueError(f"base weight dtype must be one of {sorted(BASE_DTYPE_BYTES)}, got {name!r}")
    fp8 = name in FLOAT8_DTYPES
    compute = BASE_DTYPE_BYTES[dtype_name(compute_dtype)] if fp8 else BASE_DTYPE_BYTES[name]
    return dataclasses.replace(
        info,
        weight_bytes=float(BASE_DTYPE_BYTES[name]),
        compute_bytes=compute,
        cast_params=info.block_params if fp8 else 0,
    )


def model_info(
    model: nn.Module,
    latent_shape: tuple[int, ...],
    context_tokens: int | None = None,
    patch_size: int | None = None,
    lora_targets: str = "auto",
    compute_dtype=None,
    block_lists: str | tuple[str, ...] = "auto",
) -> ModelInfo:
    """Count a diffusion network (the toy DiT, the core DiT, ComfyUI's MMDiT or Flux, or any model with a block
    list `enable_gradient_checkpointing` finds). `context_tokens`: text tokens in its joint attention (the
    core DiT knows its own; SD3: 154; Flux: 256 or 512); `patch_size` defaults to the model's, else 2.
    `compute_dtype`: the dtype it computes in (ComfyUI: the model's manual-cast dtype for fp8 weights);
    default: its weights' dtype when they are all one float dtype of 2 or 4 bytes. `lora_targets` / `block_lists`:
    a preset or regex / the block ModuleLists (default: found by the families' names). Works on `meta` tensors."""
    from .memory import find_block_lists

    blocks = find_block_lists(model, block_lists)
    config = getattr(model, "cfg", None)
    width = (
        getattr(config, "width", None)
        or getattr(model, "hidden_size", None)
        or next(iter(_linear_shapes(next(iter(blocks.values()))).values()))[0]
    )
    patch = patch_size or getattr(config, "patch_size", None) or getattr(model, "patch_size", None) or 2
    ctx = context_tokens if context_tokens is not None else getattr(config, "context_tokens", 0)
    H, W = latent_shape[-2:]  # (C, H, W), or (C, T, H, W) for a video-shaped latent format (Qwen-Image: T = 1)
    frames = math.prod(latent_shape[1:-2])
    tokens = frames * (H // patch) * (W // patch)
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    weight_bytes = sum(p.numel() * p.element_size() for p in base) / max(1, sum(p.numel() for p in base))
    block_base = [p for b in blocks.values() for n, p in b.named_parameters() if "lora_" not in n]
    dtypes = {dtype_name(p.dtype) for p in base}
    if compute_dtype is None and len(dtypes) == 1 and BASE_DTYPE_BYTES.get(next(iter(dtypes)), 1) > 1:
        compute_dtype = next(iter(dtypes))
    compute = BASE_DTYPE_BYTES.get(dtype_name(compute_dtype), 0) if compute_dtype is not None else 0
    cast = sum(p.numel() for p in block_base if compute and dtype_name(p.dtype) != dtype_name(compute_dtype))
    layers = [m.weight.numel() for b in blocks.values() for m in b.modules() if isinstance(m, nn.Linear)]
    return ModelInfo(
        params=sum(p.numel() for p in base),
        weight_bytes=weight_bytes,
        compute_bytes=compute,
        block_params=sum(p.numel() for p in block_base),
        cast_params=cast,
        largest_layer_params=max(layers, default=0),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        lora_params_per_rank=_lora_params_per_rank(model, lora_targets),
        width=int(width),
        depth=sum(len(b) for b in blocks.values()),
        tokens=tokens,
        context_tokens=int(ctx),
        latent_elems=math.prod(latent_shape),
        flops_per_row=forward_flops(model, blocks, tokens, int(ctx), int(width)),
    )


# ---------------------------------------------------------------------------------------- device
@dataclass
class DeviceInfo:
    kind: str  # "cpu" or "cuda"
    name: str  # e.g. "NVIDIA H100 80GB HBM3" or the CPU model
    total_bytes: int  # device memory (RAM for the CPU)
    free_bytes: int  # free now


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def device_info(device: torch.device | str = "cpu") -> DeviceInfo:
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceInfo("cuda", torch.cuda.get_device_name(device), total, free)
    import psutil

    vm = psutil.virtual_memory()
    return DeviceInfo("cpu", cpu_name(), vm.total, vm.available)


# -------------------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """The counts one iteration of a config implies (trainer batch arithmetic, one process)."""

    trajectories: int  # B
    cfg_rows: int  # 2 with classifier-free guidance, else 1
    nfe_per_trajectory: float  # guided velocities per trajectory in the rollout (mean over window positions)
    rollout_rows: int  # most rows in one rollout forward call
    rollout_latents: int  # latents alive at the rollout's widest step (chain + ODE branches)
    kept_latents: int  # latents stored from the rollout to the update
    images: int  # decodes and reward calls
    images_per_call: int  # images in one reward batch
    update_rows: int  # rows under autograd at once (one minibatch at one step; CFG's unconditional
    # rows only with uncond_grad, docs/method.md §7)
    update_ref_rows: int  # rows of the no-grad reference forward (adapter off) of one minibatch
    update_forwards: int  # rows × trained steps × epochs: forwards with grad in the update
    update_nograd_forwards: int  # the same for no-grad forwards: the reference, and the detached uncond pass
    act_bytes: int  # bytes per activation element (2 under bf16 autocast, else 4)
    checkpointing: bool  # gradient checkpointing of the blocks
    optimizer_bytes_per_param: float  # AdamW: 8 (two fp32 moments); 8-bit AdamW: 2


def window_starts(config) -> list[int]:
    """Every window start the config's schedule can draw (docs/method.md §10)."""
    lo, hi = config.window_range
    stride = config.sde_window_stride if config.sde_window_schedule == "sliding" else 1
    return list(range(lo, hi - config.sde_window + 1, stride))


def window_counts(config, reward_offsets) -> tuple[float, int, float]:
    """With an SDE window: NFE per trajectory and trained steps, averaged over the schedule's starts (time),
    and the most completions any start needs (memory) (docs/method.md §10)."""
    T, W = config.steps, config.sde_window
    nfe, completions, trained = [], [], []
    for s in window_starts(config):
        steps = [k for k in range(s, s + W) if k < config.trained_step_count]
        nfe.append(predicted_nfe(T, config.ode_steps, window=(s, W), reward_offsets=reward_offsets))
        completions.append(len(completion_indices(needed_reward_columns(steps, reward_offsets, T), s, W)))
        trained.append(len(steps))
    return sum(nfe) / len(nfe), max(completions) if reward_offsets else 0, sum(trained) / len(trained)


def workload(config, info: ModelInfo | None = None) -> Workload:
    """The counts of `config` (a TrainConfig or anything with its fields); with `info`, activations are no
    wider than the network's compute dtype (a bf16 network computes in bf16 without autocast too)."""
    T, B = config.steps, config.batch_size
    cfg_rows = 1 if config.cfg_scale == 1.0 else 2  # None = the model's default, which uses CFG
    mode = advantage_mode(config.advantage_mode)
    dense = mode.needs_ode_branches
    nfe = predicted_nfe(T, config.ode_steps) if dense else T
    grad_rows = cfg_rows if getattr(config, "uncond_grad", False) else 1  # rows per trajectory under autograd
    widest = T * B if dense else B
    chunk = max(1, config.max_batch // cfg_rows)
    trained = config.trained_step_count
    images = B * (T + 1) if dense else B
    if getattr(config, "sde_window", 0):  # the SDE window: fewer NFE, completions and trained steps (§10)
        nfe, completions, trained = window_counts(config, mode.reward_offsets if dense else ())
        widest, images = (1 + completions) * B if dense else B, B * (completions + 1) if dense else B
    return Workload(
        trajectories=B,
        cfg_rows=cfg_rows,
        nfe_per_trajectory=nfe,
        rollout_rows=min(widest, chunk) * cfg_rows,
        rollout_latents=widest + (T + 1) * B,
        kept_latents=(2 * T + 1) * B if dense else (T + 1) * B,
        images=images,
        images_per_call=min(images, config.reward_batch),
        update_rows=min(config.train_batch, B) * grad_rows,
        update_ref_rows=min(config.train_batch, B) * cfg_rows,
        update_forwards=B * grad_rows * trained * config.inner_epochs,
        update_nograd_forwards=B * (2 * cfg_rows - grad_rows) * trained * config.inner_epochs,
        act_bytes=min(2 if config.dtype == "bfloat16" else 4, (info.compute_bytes if info else 0) or 4),
        checkpointing=bool(getattr(config, "grad_checkpointing", False)),
        optimizer_bytes_per_param=2.0 if getattr(config, "optimizer", "adamw") == "adamw8bit" else 8.0,
    )


# -------------------------------------------------------------------------------------- estimate
@dataclass
class Estimate:
    peak_bytes: float  # predicted peak device memory of one iteration
    seconds_per_iteration: float
    breakdown: dict = field(default_factory=dict)  # bytes per component, seconds per stage, the counts

    @property
    def reserve_bytes(self) -> float:
        """What a job allocates beyond the base weights and reward models it already holds when it starts: LoRA,
        optimizer state and the largest stage (what a ComfyUI job reserves from ComfyUI's model management)."""
        b = self.breakdown
        return self.peak_bytes - b["weights_bytes"] - b["reward_models_bytes"]

    def summary(self) -> str:
        b = self.breakdown
        return (
            f"~{self.peak_bytes / 2**30:.1f} GiB peak (weights {b['weights_bytes'] / 2**30:.1f}, largest stage "
            f"{b['largest_stage']} {b[b['largest_stage'] + '_bytes'] / 2**30:.1f}), "
            f"~{self.seconds_per_iteration:.0f} s / iteration"
        )


def cast_block_bytes(info: ModelInfo) -> float:
    """Compute-dtype copies of one block's weights when they are stored in another dtype (fp8), else 0."""
    return info.cast_params / max(1, info.depth) * info.compute_bytes


def rollout_bytes(w: Workload, info: ModelInfo, c: Constants) -> float:
    """Peak above the stage start of a rollout: one chunk's transient activations + the latents in flight (+ one
    layer's cast weight: no-grad frees each cast after its matmul)."""
    cast_layer = info.largest_layer_params * info.compute_bytes if info.cast_params else 0
    return (
        c.act_infer * w.rollout_rows * info.sequence * info.width * w.act_bytes
        + c.latent_copies * w.rollout_latents * info.latent_elems * 4
        + cast_layer
    )


def update_bytes(w: Workload, info: ModelInfo, c: Constants, lora_params: int) -> float:
    """Peak above the stage start of the update, for one minibatch at one step, plus the LoRA gradients (fp32).

    Without checkpointing autograd keeps every block's activations, and the no-grad reference forward runs
    on top of them. With it only the block inputs are kept; the peak is then the backward's recompute of one
    block (the reference forward, no larger, ran before it). Cast weights (fp8 base): every block's are kept
    without checkpointing, one block's (recomputed) with it."""
    unit = w.update_rows * info.sequence * info.width * w.act_bytes
    ref = w.update_ref_rows * info.sequence * info.width * w.act_bytes
    cast = cast_block_bytes(info)
    if w.checkpointing:
        return c.act_ckpt * unit * info.depth + max(c.act_train * unit, c.act_infer * ref) + 4 * lora_params + cast
    return c.act_train * unit * info.depth + c.act_infer * ref + 4 * lora_params + cast * (info.depth + 1)


def estimate(
    config,
    info: ModelInfo,
    device: DeviceInfo | None = None,
    constants: Constants | None = None,
    reward_model_bytes: float = 0.0,
) -> Estimate:
    """Predicted peak memory and seconds per iteration of `config` (a TrainConfig) on a model and device.

    `reward_model_bytes`: weights of the decoder and reward model(s) on the device; with `offload_reward`
    they count only in the reward stage."""
    c = constants or constants_for(device.kind if device is not None else "cpu")
    w = workload(config, info)
    lora_params = config.lora_rank * info.lora_params_per_rank
    stages = {
        "rollout": rollout_bytes(w, info, c),
        "reward": c.reward_bytes_per_image * w.images_per_call,
        "update": update_bytes(w, info, c, lora_params),
    }
    resident = {
        "weights_bytes": info.params * info.weight_bytes + info.buffer_bytes,
        "lora_bytes": 4.0 * lora_params,
        "optimizer_bytes": w.optimizer_bytes_per_param * lora_params,
        "reward_models_bytes": 0.0 if getattr(config, "offload_reward", False) else reward_model_bytes,
    }
    visiting = reward_model_bytes - resident["reward_models_bytes"]  # offloaded models, back for their stage
    kept = w.kept_latents * info.latent_elems * 4.0
    peaks = {
        "rollout": stages["rollout"],
        "reward": kept + stages["reward"] + visiting,
        "update": kept + stages["update"],
    }
    largest = max(peaks, key=peaks.get)
    flops = info.flops_per_row
    train_passes = c.train_cost + (1 if w.checkpointing else 0)  # grad forward + backward (+ recompute)
    seconds = {
        "rollout_s": w.trajectories * w.nfe_per_trajectory * w.cfg_rows * flops / c.flops_per_s,
        "reward_s": w.images * c.reward_s_per_image,
        "update_s": (w.update_forwards * train_passes + w.update_nograd_forwards) * flops / c.flops_per_s,
    }
    breakdown = {
        **resident,
        **{f"{k}_bytes": v for k, v in stages.items()},
        "kept_latents_bytes": kept,
        "largest_stage": largest,
        **seconds,
        "workload": dataclasses.asdict(w),
        "constants": c.source,
    }
    return Estimate(
        peak_bytes=sum(resident.values()) + peaks[largest],
        seconds_per_iteration=sum(seconds.values()),
        breakdown=breakdown,
    )


def fits(est: Estimate, device: DeviceInfo, margin: float = 0.9) -> bool:
    """Whether the estimate stays under `margin` of the device's free memory."""
    return est.peak_bytes <= margin * device.free_bytes


def rollout_max_batch(
    budget_bytes: float, info: ModelInfo, config, constants: Constants | None = None, kind: str = "cpu"
) -> int:
    """The most rows per rollout forward whose transient activations fit in `budget_bytes` (≥ 1 guided row)."""
    c = constants or constants_for(kind)
    w = workload(config, info)
    per_row = c.act_infer * info.sequence * info.width * w.act_bytes
    return max(w.cfg_rows, int(budget_bytes // per_row))


def write_constants(kind: str, constants: Constants, path: str = CONSTANTS_FILE) -> str:
    """Replace the constants of one device kind ("cpu" or "cuda") in estimate_constants.json (atomically)."""
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device kind must be 'cpu' or 'cuda', got {kind!r}")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data[kind] = dataclasses.asdict(constants)
    return atomic_write_json(path, data)


def constants_json(constants: Constants) -> str:
    return json.dumps(dataclasses.asdict(constants), indent=1)
