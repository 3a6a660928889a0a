"""Private copies of a ComfyUI MODEL and VAE for a background training job (docs/architecture.md, "ComfyUI
background training").

Everything here that touches ComfyUI's model management runs on the executor thread, inside the Train
node's execute: the model is loaded with its patches (LoRAs the workflow applied), copied, and ComfyUI's own
copy is offloaded before the job's copy takes its place on the device (comfy_memory: weights held once). The
copy is built under `torch.inference_mode(False)` with every parameter and buffer cloned, so the job
thread can backpropagate through it and never shares a tensor with the MODEL other prompts use. The job
thread then only calls plain torch modules: no model management, no progress bar, no interrupt flag.
"""

from __future__ import annotations

import copy
import math
import re
import types
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from densegrpo_core.method.guidance import velocity_from_denoised
from densegrpo_core.models.families import ModelFamily, family_for_comfy_model
from densegrpo_core.models.pipeline import FlowPipeline

from . import comfy_bridge as bridge
from .comfy_memory import offload_comfy_copy

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def clone_module(module: torch.nn.Module, device=None) -> torch.nn.Module:
    """A deep copy whose parameters and buffers are fresh, normal (non-inference) tensors, frozen, on `device`
    (default: where they are). Each tensor is copied once, straight to `device` (deepcopy's memo is filled
    with the copies first), so a copy to the CPU never holds a second copy on the GPU."""
    with torch.inference_mode(False), torch.no_grad():
        memo = {}
        for m in module.modules():
            for p in m._parameters.values():
                if p is not None and id(p) not in memo:
                    memo[id(p)] = torch.nn.Parameter(p.detach().to(device or p.device, copy=True), requires_grad=False)
            for b in m._buffers.values():
                if b is not None and id(b) not in memo:
                    memo[id(b)] = b.detach().to(device or b.device, copy=True)
        return copy.deepcopy(module, memo)


def clone_tensors(obj):
    """Conds and latents made by nodes are inference tensors: clone them for the job thread."""
    with torch.inference_mode(False):
        if isinstance(obj, torch.Tensor):
            return obj.detach().clone()
        if isinstance(obj, dict):
            return {k: clone_tensors(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(clone_tensors(v) for v in obj)
        return obj


def _rope1(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Flux's rotary embedding in plain torch (ComfyUI's fallback formula, out of place): differentiable."""
    x_ = x.to(dtype=freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs_cis[..., 0] * x_[..., 0] + freqs_cis[..., 1] * x_[..., 1]).reshape(*x.shape).type_as(x)


class _Trainable(torch.overrides.TorchFunctionMode):
    """What ComfyUI's Flux blocks need to be trained by autograd, only while gradients are recorded:
    `x += y` with either side in the graph computes `x + y` (it arrives here as `add_`; Python rebinds the name
    to the result, and the blocks, which add their residuals in place, never call a bare `add_`; in place, it
    would also change a checkpointed block's saved input), and comfy_kitchen's rotary-embedding kernel, which has no
    backward, is computed in plain torch."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_grad_enabled():
            name = str(getattr(func, "_qualified_op_name", None) or getattr(func, "__name__", ""))
            if name == "add_" and any(getattr(a, "requires_grad", False) for a in args):  # `x += y` is add_
                return torch.add(*args, **kwargs)
            if name == "comfy_kitchen::apply_rope":
                q, k, freqs = args
                return _rope1(q, freqs), _rope1(k, freqs)
            if name == "comfy_kitchen::apply_rope1":
                return _rope1(*args)
        return func(*args, **kwargs)


def _train_safe_forward(self, *args, **kwargs):
    if not torch.is_grad_enabled():
        return type(self).forward(self, *args, **kwargs)
    with _Trainable():  # thread-local, also entered by a checkpoint's recompute
        return type(self).forward(self, *args, **kwargs)


def make_blocks_trainable(diffusion_model, family: ModelFamily) -> int:
    """Run the blocks of the family's ComfyUI block lists (Flux: double/single stream blocks) in a form autograd
    can train (`_Trainable`) while gradients are recorded; without gradients (rollouts, the KL reference) they
    compute exactly as in ComfyUI. Returns the number of blocks wrapped."""
    return _wrap_blocks_trainable(diffusion_model, family.comfy.block_lists)


def _wrap_blocks_trainable(diffusion_model, block_lists) -> int:
    n = 0
    for name in block_lists:
        for block in diffusion_model.get_submodule(name) if _has_submodule(diffusion_model, name) else ():
            block.forward = types.MethodType(_train_safe_forward, block)
            n += 1
    return n


def _has_submodule(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


# The hooks a family record names as its `comfy_patch` (densegrpo_core.models.families): they import or patch
# ComfyUI's implementation, so they live here, on the ComfyUI side.
COMFY_PATCHES = {"make_blocks_trainable": make_blocks_trainable}


def comfy_family(base, node: str) -> ModelFamily:
    """The model family of a ComfyUI BaseModel by its class; a node input error naming the known families
    for a model no family covers (never another family's LoRA targets)."""
    try:
        return family_for_comfy_model(base)
    except ValueError as e:
        raise bridge.input_error(node, "model", f"cannot be trained: {e}") from None


# ---------------------------------------------------------------------------------- what the job trains
# A Linear inside a transformer block is an attention / MLP projection when a component of its path (after the
# block index) names attention or a feed-forward, and none names a modulation, norm, embedding or gate layer.
_PROJECTION = re.compile(r"(?i)attn|attention|mlp|ff|feed_?forward|experts?")
_NOT_PROJECTION = re.compile(r"(?i)mod|adaln|norm|embed|gate")


@dataclass(frozen=True)
class TrainTargets:
    """What a Train job adapts in ComfyUI's network: from the family record, or, for a flow model no family
    covers, from ComfyUI's own LoRA key map (`auto_targets`)."""

    arch: str  # the family's ComfyUI preset, or a full-name regex of the chosen Linear modules
    block_lists: tuple[str, ...]  # the diffusion model's ModuleLists of transformer blocks
    patch: Callable | None  # (diffusion_model) → makes ComfyUI's blocks differentiable under autograd, or None
    default_shift: float | None
    default_cfg: float
    note: str | None = None  # why the targets are what they are, for a model no family covers


def train_targets(model_patcher, node: str) -> TrainTargets:
    """The LoRA targets, block lists and trainability patch for a MODEL: its family's, or `auto_targets` for a
    flow model no family covers; a node input error for a model that is not flow matching, naming the
    supported families."""
    bridge.require_flow_model(model_patcher, node)
    base = model_patcher.model
    try:
        family = family_for_comfy_model(base)
    except ValueError:
        return auto_targets(base, node)
    patch = COMFY_PATCHES[family.comfy_patch] if family.comfy_patch else None
    return TrainTargets(
        arch=family.comfy.preset,
        block_lists=family.comfy.block_lists,
        patch=(lambda dm: patch(dm, family)) if patch else None,
        default_shift=family.default_shift,
        default_cfg=family.default_cfg,
    )


def lora_loader_linears(base) -> list[str]:
    """Module paths (under diffusion_model) of every nn.Linear whose weight ComfyUI's LoRA loader can patch:
    the targets of `comfy.lora.model_lora_keys_unet` (plain keys, and (key, slice) pairs of fused weights)."""
    import comfy.lora

    weights = set()
    for target in comfy.lora.model_lora_keys_unet(base, {}).values():
        key = target if isinstance(target, str) else target[0]
        if key.startswith("diffusion_model.") and key.endswith(".weight"):
            weights.add(key[len("diffusion_model.") : -len(".weight")])
    modules = dict(base.diffusion_model.named_modules())
    return sorted(name for name in weights if isinstance(modules.get(name), torch.nn.Linear))


def _block_projection(name: str, block_lists: set[str]) -> tuple[str, int, str] | None:
    """(block list, index, path inside the block) of an attention / MLP projection in a block list, else None."""
    m = re.fullmatch(r"([A-Za-z_]\w*)\.(\d+)\.(.+)", name)
    if not m or m.group(1) not in block_lists:
        return None
    parts = m.group(3).split(".")
    if any(_NOT_PROJECTION.search(p) for p in parts) or not any(_PROJECTION.search(p) for p in parts):
        return None
    return m.group(1), int(m.group(2)), m.group(3)


def targets_regex(chosen: list[tuple[str, int, str]], lengths: dict[str, int]) -> str:
    """An exact full-name regex of the chosen (list, index, path) modules: `list\\.\\d+\\.(?:paths)` where
    every block of a list has the same paths, else the blocks' indices spelled out."""
    parts = []
    for lst in sorted({c[0] for c in chosen}):
        by_index: dict[int, set[str]] = {}
        for _, i, path in (c for c in chosen if c[0] == lst):
            by_index.setdefault(i, set()).add(path)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, paths in sorted(by_index.items()):
            groups.setdefault(tuple(sorted(paths)), []).append(i)
        for paths, indices in groups.items():
            alt = "|".join(re.escape(p) for p in paths)
            every = len(groups) == 1 and indices == list(range(lengths[lst]))
            index = r"\d+" if every else "(?:" + "|".join(map(str, indices)) + ")"
            parts.append(rf"{re.escape(lst)}\.{index}\.(?:{alt})")
    return "(?:" + "|".join(parts) + ")"


def auto_targets(base, node: str) -> TrainTargets:
    """Targets for a flow model no family covers, from ComfyUI's LoRA key map: every Linear the loader can patch
    that is an attention / MLP projection inside the network's ModuleLists of transformer blocks (the top-level
    ModuleLists holding such blocks). The blocks run under `_Trainable` while gradients are recorded (AuraFlow
    trains as shipped; HiDream needs it for comfy_kitchen's rope kernel). A node input error when no such Linear
    is found, naming the supported families."""
    name = type(base).__name__
    dm = base.diffusion_model
    lists = {n: len(m) for n, m in dm.named_children() if isinstance(m, torch.nn.ModuleList) and len(m)}
    chosen = [c for c in (_block_projection(n, set(lists)) for n in lora_loader_linears(base)) if c]
    if not chosen:
        raise bridge.input_error(
            node,
            "model",
            f"cannot be trained: no family record covers ComfyUI's {name} and its LoRA key map has no attention "
            f"or MLP projection inside a block list ({', '.join(lists) or 'no ModuleList of blocks'}); "
            f"{bridge.supported_families_text()}",
        )
    block_lists = tuple(n for n in lists if any(c[0] == n for c in chosen))
    note = (
        f"no family record for {name}: LoRA targets chosen from ComfyUI's LoRA key map, {len(chosen)} Linear "
        f"layers (attention/MLP projections in {', '.join(block_lists)})"
    )
    ms = base.model_sampling
    return TrainTargets(
        arch=targets_regex(chosen, lists),
        block_lists=block_lists,
        patch=lambda diffusion_model: _wrap_blocks_trainable(diffusion_model, block_lists),
        default_shift=float(getattr(ms, "shift", 1.0)),
        default_cfg=4.5,
        note=note,
    )


def with_guidance(model_patcher, conditioning: list, guidance: float) -> list:
    """CONDITIONING with the guidance-embedding value set, as FluxGuidance sets it, for a family with a guidance
    embedding (its record's `default_guidance`; `guidance` < 0 means that default); unchanged for others."""
    try:
        family = family_for_comfy_model(model_patcher.model)
    except ValueError:
        return conditioning
    if family.default_guidance is None:
        return conditioning
    value = family.default_guidance if guidance < 0 else float(guidance)
    return [[c[0], {**c[1], "guidance": value}] for c in conditioning]


def check_weight_dtypes(base, node: str) -> None:
    """Train float32/float16/bfloat16 weights, or fp8 weights that ComfyUI casts per layer (manual cast ops)."""
    dtypes = {p.dtype for p in base.diffusion_model.parameters()}
    odd = dtypes - set(FLOAT_DTYPES) - set(FP8_DTYPES)
    if odd or (dtypes & set(FP8_DTYPES) and getattr(base, "manual_cast_dtype", None) is None):
        raise bridge.input_error(
            node,
            "model",
            f"has {', '.join(sorted(map(str, dtypes)))} weights; LoRA training "
            f"needs float32, float16, bfloat16 or fp8 (e4m3fn / e5m2) weights "
            f"that ComfyUI casts per layer (load it with a weight_dtype of "
            f"UNETLoader)",
        )


def private_base_model(model_patcher, node: str, targets: TrainTargets | None = None):
    """A copy of the MODEL's BaseModel with its own diffusion network (patched weights) and model sampling, on
    the model's device, while ComfyUI's own copy is offloaded (comfy_memory): the weights are on the device once.

    ComfyUI loads the model with its patches; the patched weights are copied to the offload device (the CPU)
    when the model lives elsewhere, ComfyUI's copy is unloaded through its model management, and the copy then
    moves to the device. fp8 weights stay fp8 in the copy, with ComfyUI's ops that cast them per layer."""
    import comfy.model_management

    targets = targets or train_targets(model_patcher, node)
    comfy.model_management.load_models_gpu([model_patcher], force_full_load=True)  # applies the patches
    base = model_patcher.model
    check_weight_dtypes(base, node)
    device = model_patcher.load_device
    staging = model_patcher.offload_device
    private = copy.copy(base)  # shallow: config, methods, flags
    private.__dict__ = dict(base.__dict__)
    for attr in ("_modules", "_parameters", "_buffers"):
        private.__dict__[attr] = OrderedDict(base.__dict__[attr])
    private.diffusion_model = clone_module(base.diffusion_model, staging)
    private.model_sampling = clone_module(base.model_sampling)
    for name in list(private._modules):
        if name not in ("diffusion_model", "model_sampling"):
            private._modules[name] = clone_module(private._modules[name])
    if targets.patch:
        targets.patch(private.diffusion_model)
    offload_comfy_copy(model_patcher)
    private.diffusion_model.to(device)
    return private


def conditioning_kwargs(base, conditioning, latent: torch.Tensor, node: str, name: str) -> dict:
    """CONDITIONING → the keyword tensors the model's apply_model takes (c_crossattn, y, guidance, …), (1, ...)."""
    return _conditioning(base, conditioning, latent, node, name)[0]


def _conditioning(base, conditioning, latent: torch.Tensor, node: str, name: str) -> tuple[dict, set[str]]:
    """(conditioning_kwargs, the keys ComfyUI batches by repeating tokens: its CONDCrossAttn conds)."""
    import comfy.conds
    import comfy.sampler_helpers

    if not conditioning:
        raise bridge.input_error(node, name, "is empty")
    entry = comfy.sampler_helpers.convert_cond(conditioning)[0]
    params = {  # width/height: only eps models' extra_conds (SDXL, PixArt, HunyuanDiT) read them
        **entry,
        "device": latent.device,
        "noise": latent,
        "width": latent.shape[-1] * 8,
        "height": latent.shape[-2] * 8,
        "prompt_type": "positive",
    }
    out = base.extra_conds(**params)
    import comfy.conds

    values = {
        k: v.cond
        for k, v in out.items()
        if isinstance(getattr(v, "cond", None), torch.Tensor) or isinstance(v, comfy.conds.CONDConstant)
    }  # CONDConstant values (Lumina 2 / Z-Image: num_tokens) are plain values the model takes as they are
    repeatable = {k for k, v in out.items() if isinstance(v, comfy.conds.CONDCrossAttn)}
    return clone_tensors(values), repeatable


def stack_kwargs(items: list[dict], lengths: dict[str, int] | None = None) -> dict:
    """Concatenate per-prompt conds along the batch; token sequences of different lengths are repeated to
    their least common multiple (or to `lengths[key]`, a multiple of each), as ComfyUI's CONDCrossAttn does."""
    out = {}
    for key in items[0]:
        tensors = [d[key] for d in items]
        if (tensors[0].ndim == 3 and len({t.shape[1] for t in tensors}) > 1) or (lengths and key in lengths):
            n = (lengths or {}).get(key) or math.lcm(*[t.shape[1] for t in tensors])
            tensors = [t.repeat(1, n // t.shape[1], 1) for t in tensors]
        out[key] = torch.cat(tensors)
    return out


ENTRY_KEY = "comfy_entry"  # the cond key naming each row's conditioning entry (ConditioningTable, grouped)


class ConditioningTable:
    """The model keyword arguments of every prompt and of the negative, batched as ComfyUI's sampler batches
    conds, fixed once so that any batch — prompt rows and negative rows together — concatenates:

    - a cross-attention cond (ComfyUI's CONDCrossAttn, keys in `repeatable`: SD3's and FLUX's c_crossattn)
      repeats its tokens to the least common multiple of every entry's token count, as CONDCrossAttn.concat;
    - rows whose other token sequences (CONDRegular: Qwen-Image's and Z-Image's c_crossattn) differ in length, or
      whose CONDConstant values differ (Lumina 2 / Z-Image: `num_tokens`), never share a forward in ComfyUI.

    When every entry has the same constants, keys and CONDRegular lengths, a batch is `stack_kwargs` of its rows
    and the constants are passed as they are. Otherwise each sequence is zero-padded to the longest of all
    entries and the batch carries ENTRY_KEY (N,): `forwards` splits it into one forward per group, each row's
    sequences cut back to its own length. `repeatable` None: every sequence key repeats (stack_kwargs)."""

    def __init__(self, entries: list[dict], repeatable: set[str] | None = None):
        self.tensors = [{k: v for k, v in e.items() if isinstance(v, torch.Tensor)} for e in entries]
        self.constants = [{k: v for k, v in e.items() if not isinstance(v, torch.Tensor)} for e in entries]
        keys = dict.fromkeys(k for t in self.tensors for k in t)
        self.lengths = [{k: v.shape[1] for k, v in t.items() if v.ndim == 3} for t in self.tensors]
        sequences = {k for n in self.lengths for k in n}
        repeat = sequences if repeatable is None else sequences & set(repeatable)
        self.lcm = {k: math.lcm(*[n[k] for n in self.lengths if k in n]) for k in repeat}
        signatures = [
            repr((sorted(c.items()), sorted(t), sorted((k, v) for k, v in n.items() if k not in repeat)))
            for c, t, n in zip(self.constants, self.tensors, self.lengths)
        ]
        self.group = [signatures.index(s) for s in signatures]
        self.grouped = len(set(signatures)) > 1
        longest = {k: max(n[k] for n in self.lengths if k in n) for k in sequences}
        like = {k: next(t[k] for t in self.tensors if k in t) for k in keys}
        self.padded = []  # every key of every entry, sequences zero-padded to the longest (absent keys: zeros)
        for t in self.tensors:
            row = {}
            for k in keys:
                v = t.get(k, torch.zeros_like(like[k]))
                if k in longest and v.shape[1] < longest[k]:
                    v = torch.cat([v, v.new_zeros(v.shape[0], longest[k] - v.shape[1], *v.shape[2:])], dim=1)
                row[k] = v
            self.padded.append(row)

    def batch(self, indices: list[int]) -> dict:
        """The core's cond dict (N, ...) for these entries."""
        if not self.grouped:
            return stack_kwargs([self.tensors[i] for i in indices], self.lcm)
        out = {k: torch.cat([self.padded[i][k] for i in indices]) for k in self.padded[0]}
        out[ENTRY_KEY] = torch.tensor(indices, dtype=torch.long)
        return out

    def forwards(self, cond: dict) -> list[tuple[list[int] | None, dict]]:
        """(rows, apply_model keyword arguments) for each forward the batch `cond` takes; rows None: all."""
        if ENTRY_KEY not in cond:
            return [(None, {**cond, **self.constants[0]})]
        entries = cond[ENTRY_KEY].tolist()
        groups: dict[int, list[int]] = {}
        for row, e in enumerate(entries):
            groups.setdefault(self.group[e], []).append(row)
        out = []
        for rows in groups.values():
            items = []
            for r in rows:
                e = entries[r]
                items.append(
                    {
                        k: cond[k][r : r + 1, : self.lengths[e][k]] if k in self.lengths[e] else cond[k][r : r + 1]
                        for k in self.tensors[e]
                    }
                )
            out.append((rows, {**stack_kwargs(items, self.lcm), **self.constants[entries[rows[0]]]}))
        return out


class ComfyVelocity(torch.nn.Module):
    """The core's VelocityModel over a private BaseModel: v = (x - apply_model(x, τ, **cond)) / τ, one forward per
    group of rows ComfyUI would batch together (ConditioningTable)."""

    def __init__(self, base, table: ConditioningTable | None = None):
        super().__init__()
        self.base, self.table = base, table

    def _velocity(self, x, tau, kwargs):
        return velocity_from_denoised(x, self.base.apply_model(x, tau, transformer_options={}, **kwargs), tau)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        parts = self.table.forwards(cond) if self.table is not None else [(None, cond)]
        if len(parts) == 1 and parts[0][0] is None:
            return self._velocity(x, tau, parts[0][1])
        order = torch.tensor([r for rows, _ in parts for r in rows], device=x.device)
        v = []
        for rows, kwargs in parts:
            at = torch.tensor(rows, device=x.device)
            v.append(self._velocity(x[at], tau[at], kwargs))
        return torch.cat(v)[torch.argsort(order)]


class PrivateDecoder:
    """The core's Decoder over a private copy of the VAE's network: model-space latents (N, C, H, W), or
    (N, C, T, H, W) for a 3-D latent format, → images (N·T, H, W, 3) in [0, 1]."""

    def __init__(self, vae, latent_format):
        self.net = clone_module(vae.first_stage_model)
        self.dtype = vae.vae_dtype
        self.process_output = vae.process_output
        self.latent_dim = getattr(vae, "latent_dim", 2)
        self.latent_format = latent_format

    def to(self, device):
        self.net.to(device)
        return self

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        z = self.latent_format.process_out(latents.float()).to(device, self.dtype)
        if self.latent_dim == 2 and z.ndim == 5:  # an image VAE on a 3-D latent format's frames, as comfy.sd.VAE.decode
            z = z[:, :, 0]
        images = self.process_output(self.net.decode(z).float()).movedim(1, -1)  # (N, H, W, 3) or (N, T, H, W, 3)
        return images.reshape(-1, *images.shape[-3:])[..., :3].float()  # frames as images, as VAEDecode


def private_pipeline(
    model_patcher,
    vae,
    prompt_conds: dict[str, list],
    negative,
    latent: torch.Tensor,
    node: str,
    targets: TrainTargets | None = None,
) -> FlowPipeline:
    """A FlowPipeline the job thread may train: private model, private VAE, prompts pre-encoded; LoRA targets
    and block lists from `targets` (default: `train_targets`), its note in the pipeline's info."""
    targets = targets or train_targets(model_patcher, node)
    base = private_base_model(model_patcher, node, targets)
    names = list(prompt_conds)
    entries, repeatable = [], set()
    for conds, name in [*((prompt_conds[p], "prompts") for p in names), (negative, "negative_prompt")]:
        kwargs, keys = _conditioning(base, conds, latent, node, name)
        entries.append(kwargs)
        repeatable |= keys
    table = ConditioningTable(entries, repeatable)
    index = {p: i for i, p in enumerate(names)}
    ms = base.model_sampling
    latent_format = model_patcher.get_model_object("latent_format")

    def encode(prompts):
        return table.batch([index[p] for p in prompts])

    def null_cond(n):
        return table.batch([len(names)] * n)

    return FlowPipeline(
        model=ComfyVelocity(base, table),
        encode=encode,
        null_cond=null_cond,
        decode=PrivateDecoder(vae, latent_format),
        latent_shape=tuple(latent.shape[1:]),
        arch=targets.arch,
        default_shift=float(getattr(ms, "shift", targets.default_shift)),
        default_cfg=targets.default_cfg,
        info={"name": type(base).__name__, **({"targets_note": targets.note} if targets.note else {})},
        lora_module=base.diffusion_model,
        block_lists=targets.block_lists,
    )
