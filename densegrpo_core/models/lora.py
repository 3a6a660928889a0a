"""LoRA adapters for the velocity network: peft injection, target presets, ComfyUI-format files.

The policy π_θ is the pretrained network plus a LoRA on selected nn.Linear layers; the KL reference π_ref is
the same network with the adapter switched off (`adapters_disabled`), so no second copy of the model is kept.

Notation map (code → peft → ComfyUI file, for an adapted module path P):
    lora_down   peft `P.lora_A.default.weight`, shape (r, in)   → `diffusion_model.P.lora_down.weight`
    lora_up     peft `P.lora_B.default.weight`, shape (out, r)  → `diffusion_model.P.lora_up.weight`
    alpha       peft `lora_alpha` α; the update is W + (α/r)·up·down  → `diffusion_model.P.alpha` (scalar)

ComfyUI's loader (`comfy/lora.py`, `comfy/weight_adapter/lora.py`) maps `diffusion_model.P.lora_up.weight`
onto the weight `diffusion_model.P.weight` and scales by alpha / rank, exactly peft's α/r; without `.alpha`
it would use scale 1.0, so `.alpha` is always written.

The model given to every function here is the diffusion network itself (ComfyUI's `diffusion_model`), so
its module names are the paths P above. peft and safetensors are imported inside the functions: importing
this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

from ..util.atomic import atomic_write
from .families import preset_implementations, target_presets

LORA_FORMAT = "densegrpo.lora/1"
COMFY_PREFIX = "diffusion_model."
ADAPTER = "default"  # the one peft adapter name this module injects and reads

# Full-name regexes (peft matches a string `target_modules` with re.fullmatch), one per implementation of each
# model family (densegrpo_core.models.families: "toy", "mmdit", "flux", "diffusers_sd3", "diffusers_flux").
# Suffix lists would be wrong: "proj" also names MMDiT's patch embedder `x_embedder.proj`, a Conv2d.
TARGET_PRESETS: dict[str, str] = target_presets()
PRESET_IMPLEMENTATIONS = preset_implementations()


LORA_INITS = {"gaussian": "gaussian", "kaiming": True}  # lora_init → peft's init_lora_weights (lora_up = 0)


# ----------------------------------------------------------------------------- targets
def _discarded_outputs(model: nn.Module, preset: str | None = None) -> set[str]:
    """Linears whose output nothing uses: the context query of a diffusers joint block with `context_pre_only`
    (the last SD3 block computes it, but drops the context half of the attention output), and the preset's
    `last_block_unused` Linears in the last block of each of its block lists (Qwen-Image: the text stream's
    outputs, which no later block reads)."""
    discarded = {
        f"{name}.attn.add_q_proj"
        for name, m in model.named_modules()
        if getattr(m, "context_pre_only", False) is True and hasattr(m, "attn")
    }
    impl = PRESET_IMPLEMENTATIONS.get(preset)
    if impl is not None and impl.last_block_unused:
        modules = dict(model.named_modules())
        for block_list in impl.block_lists:
            blocks = modules.get(block_list)
            if isinstance(blocks, nn.ModuleList) and len(blocks):
                discarded |= {f"{block_list}.{len(blocks) - 1}.{path}" for path in impl.last_block_unused}
    return discarded


def _matching_linears(model: nn.Module, pattern: str, preset: str | None = None) -> list[str]:
    regex, discarded = re.compile(pattern), _discarded_outputs(model, preset)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and regex.fullmatch(name) and name not in discarded
    ]


def _resolve_targets(model: nn.Module, preset_or_regex: str) -> tuple[str, list[str]]:
    """(preset name or the regex itself, matched Linear names); "auto" resolves to the preset it picked."""
    if not isinstance(preset_or_regex, str) or not preset_or_regex:
        raise ValueError(
            f"LoRA targets must be a preset name {sorted(TARGET_PRESETS)}, 'auto' or a regex, got {preset_or_regex!r}"
        )
    if preset_or_regex == "auto":
        found = {
            name: names
            for name, pattern in TARGET_PRESETS.items()
            if (names := _matching_linears(model, pattern, name))
        }
        # a preset written for another network: its implementation's block lists are not all in this model
        # (FLUX's diffusers preset names the attention and feed-forwards of SD3's transformer_blocks, but SD3 has
        # no single_transformer_blocks), or another preset names its layers and more (ComfyUI's NextDiT preset
        # names the SwiGLU w1/w2/w3 that diffusers' Z-Image keeps too; SD3's diffusers preset names part of
        # Qwen-Image's), compared by what the regexes match; identical ones count once
        modules = dict(model.named_modules())
        found = {
            name: names
            for name, names in found.items()
            if name not in PRESET_IMPLEMENTATIONS
            or all(isinstance(modules.get(b), nn.ModuleList) for b in PRESET_IMPLEMENTATIONS[name].block_lists)
        }
        regex = {name: set(_matching_linears(model, TARGET_PRESETS[name])) for name in found}
        widest = {name: found[name] for name in found if not any(regex[name] < other for other in regex.values())}
        distinct = {tuple(names): name for name, names in reversed(widest.items())}
        if len(distinct) != 1:
            reason = "no preset matches" if not found else f"several presets match ({sorted(found)})"
            raise ValueError(
                f"LoRA targets 'auto': {reason} the modules of {type(model).__name__}; "
                f"name a preset {sorted(TARGET_PRESETS)} or pass a module-name regex"
            )
        names, name = next(iter(distinct.items()))
        return name, list(names)
    pattern = TARGET_PRESETS.get(preset_or_regex, preset_or_regex)
    try:
        names = _matching_linears(model, pattern, preset_or_regex)
    except re.error as e:
        raise ValueError(
            f"LoRA targets {preset_or_regex!r} is neither a preset {sorted(TARGET_PRESETS)} nor a valid regex: {e}"
        ) from None
    if not names:
        kind = "preset" if preset_or_regex in TARGET_PRESETS else f"regex (presets: {sorted(TARGET_PRESETS)})"
        raise ValueError(
            f"LoRA targets {kind} {preset_or_regex!r} matches no nn.Linear module of {type(model).__name__}"
        )
    return preset_or_regex, names


def lora_targets(model: nn.Module, preset_or_regex: str = "auto") -> list[str]:
    """Names of the nn.Linear modules a preset (toy | mmdit | flux | auto) or a full-name regex selects.

    "auto" picks the one preset that matches the model and whose block lists it has, or, where several do, the
    one whose modules include every other match's (the first such). ValueError naming the preset or regex when nothing
    matches, when "auto" is ambiguous, or when the regex does not compile.
    """
    return _resolve_targets(model, preset_or_regex)[1]


# ----------------------------------------------------------------------------- injection
def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module path P → peft LoRA layer, in module order; ValueError if the model carries none."""
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers; call inject_lora(model, ...) first")
    return layers


def inject_lora(
    model: nn.Module,
    targets: str = "auto",
    rank: int = 32,
    alpha: float = 64.0,
    dropout: float = 0.0,
    seed: int = 0,
    init: str = "gaussian",
) -> nn.Module:
    """Add a LoRA (rank r, scale α/r) to the target Linear layers in place; only LoRA weights stay trainable.

    lora_up (peft B) starts at zero, so the model's output is unchanged; lora_down (peft A) is drawn (`init`:
    "gaussian" N(0, std 1/r) as Flow-GRPO's `init_lora_weights="gaussian"`, or "kaiming", peft's kaiming-uniform
    default) from the CPU RNG seeded with `seed` inside a fork, so the caller's RNG state is left as it was.
    Returns the model.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if init not in LORA_INITS:
        raise ValueError(f"LoRA init must be one of {', '.join(LORA_INITS)}, got {init!r}")
    if any(isinstance(m, LoraLayer) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} already carries LoRA layers; inject into a fresh model")
    label, names = _resolve_targets(model, targets)
    exact = "|".join(re.escape(n) for n in names)  # the resolved names, so peft adapts exactly these
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=rf"(?:{exact})",
        bias="none",
        init_lora_weights=LORA_INITS[init],
    )
    with torch.random.fork_rng(devices=[]):  # peft builds and initialises the layers on the CPU
        torch.random.default_generator.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        _float32_lora_on_fp8_bases(model, init)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lora_parameters(model):
        p.requires_grad_(True)
    model._densegrpo_lora_targets = label  # the preset "auto" chose, recorded in saved files
    return model


def _float32_lora_on_fp8_bases(model: nn.Module, init: str = "gaussian") -> None:
    """peft gives a LoRA its base layer's dtype; on fp8 base weights that would quantize it to 8 bits. Those
    LoRAs are drawn again in float32 (lora_down as peft draws it, lora_up zero): fp32 masters from the start,
    computing in the input's dtype while the base layer keeps its own (fp8-casting) forward."""
    for layer in _lora_layers(model).values():
        down, up = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        if down.weight.dtype.itemsize == 1:
            down.to(torch.float32)
            up.to(torch.float32)
            if init == "gaussian":  # peft LoraLayer.reset_lora_parameters("gaussian")
                nn.init.normal_(down.weight, std=1 / layer.r[ADAPTER])
            else:
                nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
            nn.init.zeros_(up.weight)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA weights (lora_down, lora_up per adapted module, in module order): what the optimizer trains."""
    params = []
    for layer in _lora_layers(model).values():
        params += [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
    return params


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base network (π_ref): every LoRA layer is off inside the block and restored after, also on errors.

    peft's toggle also switches requires_grad of the LoRA weights; their previous flags are restored too.
    """
    layers = list(_lora_layers(model).values())
    was_disabled = [layer.disable_adapters for layer in layers]
    grad_flags = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.enable_adapters(not disabled)
        for p, flag in grad_flags:
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------- ComfyUI key form
@dataclass(frozen=True)
class LoraKeys:
    """File keys of a model whose ComfyUI loader knows some adapted modules under other names than `prefix` +
    module name (diffusers FLUX.2: ComfyUI maps "transformer." + its attention names, but its MLP and single-block
    linears only as ComfyUI's own "diffusion_model." + module keys). In save_lora's "comfyui" layout, module P's
    key base is `comfy(P)` where that is not None, else `prefix` + P; the "diffusers" layout is always
    `prefix` + P (diffusers' own names). Pass it wherever a `prefix` string is taken; load_lora reads both."""

    prefix: str
    comfy: Callable[[str], str | None]

    def key(self, name: str, layout: str = "comfyui") -> str:
        return (layout == "comfyui" and self.comfy(name)) or self.prefix + name


def _key(prefix: str | LoraKeys, name: str, layout: str = "comfyui") -> str:
    """The file key base of adapted module `name` (keys are `base.lora_down.weight`, …)."""
    return prefix.key(name, layout) if isinstance(prefix, LoraKeys) else prefix + name


def _plain(prefix: str | LoraKeys) -> str:
    return prefix.prefix if isinstance(prefix, LoraKeys) else prefix


def _rank_and_alpha(layer: nn.Module, name: str) -> tuple[int, float]:
    if ADAPTER not in layer.lora_A:
        raise ValueError(f"LoRA layer {name!r} has no adapter {ADAPTER!r} (adapters: {list(layer.lora_A)})")
    return int(layer.r[ADAPTER]), float(layer.lora_alpha[ADAPTER])


def lora_state_dict(model: nn.Module, prefix: str | LoraKeys = COMFY_PREFIX) -> dict[str, torch.Tensor]:
    """LoRA weights in ComfyUI's original-model key form: `{prefix}P.lora_down.weight` (r, in),
    `{prefix}P.lora_up.weight` (out, r) and `{prefix}P.alpha` (0-dim float32 α) for every adapted module P
    (with a LoraKeys `prefix`: its key base for P in place of `{prefix}P`).

    Tensors are detached copies on the weights' device and dtype.
    """
    sd = {}
    for name, layer in _lora_layers(model).items():
        _, alpha = _rank_and_alpha(layer, name)
        base = _key(prefix, name)
        sd[f"{base}.lora_down.weight"] = layer.lora_A[ADAPTER].weight.detach().clone()  # (r, in)
        sd[f"{base}.lora_up.weight"] = layer.lora_B[ADAPTER].weight.detach().clone()  # (out, r)
        sd[f"{base}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return sd


def _uniform_rank_and_alpha(model: nn.Module) -> tuple[int, float]:
    ranks = {_rank_and_alpha(layer, name) for name, layer in _lora_layers(model).items()}
    if len(ranks) != 1:
        raise ValueError(f"LoRA layers of {type(model).__name__} have mixed (rank, alpha): {sorted(ranks)}")
    return ranks.pop()


def _same_number(text: str, value: float) -> bool:
    try:
        return math.isclose(float(text), value, rel_tol=1e-6)
    except ValueError:
        return False


def _metadata_str(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def peft_state_dict(model: nn.Module, prefix: str | LoraKeys) -> dict[str, torch.Tensor]:
    """LoRA weights in diffusers/peft's key form, scale folded in: `{prefix}P.lora_A.weight` = lora_down (r, in),
    `{prefix}P.lora_B.weight` = (α/r)·lora_up (out, r), no alpha key (diffusers' loader then uses scale 1)."""
    sd, prefix = {}, _plain(prefix)
    for name, layer in _lora_layers(model).items():
        rank, alpha = _rank_and_alpha(layer, name)
        sd[f"{prefix}{name}.lora_A.weight"] = layer.lora_A[ADAPTER].weight.detach().clone()
        sd[f"{prefix}{name}.lora_B.weight"] = layer.lora_B[ADAPTER].weight.detach() * (alpha / rank)
    return sd


def _from_peft_layout(tensors: dict[str, torch.Tensor], layers: dict, prefix: str) -> dict[str, torch.Tensor]:
    """A diffusers/peft-layout file (lora_A / lora_B, α/r folded into B) in save_lora's layout for these layers."""
    out = {}
    for key, tensor in tensors.items():
        if key.endswith(".lora_A.weight"):
            out[key.removesuffix(".lora_A.weight") + ".lora_down.weight"] = tensor
        elif key.endswith(".lora_B.weight"):
            base = key.removesuffix(".lora_B.weight")
            layer = layers.get(base.removeprefix(prefix))
            rank, alpha = _rank_and_alpha(layer, base) if layer is not None else (1, 1.0)
            out[base + ".lora_up.weight"] = tensor.float() * (rank / alpha)
            out[base + ".alpha"] = torch.tensor(alpha)
        else:
            out[key] = tensor
    return out


def save_lora(
    path: str | os.PathLike,
    model: nn.Module,
    metadata: dict | None = None,
    dtype: torch.dtype = torch.float32,
    prefix: str | LoraKeys = COMFY_PREFIX,
    layout: str = "comfyui",
) -> None:
    """Write the LoRA as a ComfyUI-loadable safetensors file, atomically (temp file + rename, never half-written).

    layout "comfyui" (default): lora_up / lora_down / alpha keys, which ComfyUI loads at the right strength;
    "diffusers": lora_A / lora_B with α/r folded into B and no alpha key (`peft_state_dict`), for diffusers'
    `load_lora_weights` and peft. Both reload with `load_lora`.

    Metadata (values stringified: str as is, anything else as JSON) carries `densegrpo.format`, `rank`,
    `alpha` and `targets` from the model, plus the caller's entries (ψ, reward, iteration, config hash, ...);
    a caller's `rank`/`alpha` must agree with the model's. Weights are stored contiguous on the CPU in `dtype`
    (float32, float16 or bfloat16); `.alpha` stays float32.
    """
    import safetensors.torch

    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"LoRA file dtype must be torch.float32, float16 or bfloat16, got {dtype!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder!r} for the LoRA file {path!r} does not exist")
    rank, alpha = _uniform_rank_and_alpha(model)
    meta = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise ValueError(f"LoRA metadata keys must be strings, got {key!r}")
        meta[key] = _metadata_str(value)
    for key, own in (("rank", rank), ("alpha", alpha)):
        if key in meta and not _same_number(meta[key], own):
            raise ValueError(f"LoRA metadata {key}={meta[key]!r} disagrees with the model's {key} {own!r}")
    meta.update({"densegrpo.format": LORA_FORMAT, "rank": str(rank), "alpha": _metadata_str(alpha)})
    if hasattr(model, "_densegrpo_lora_targets"):
        meta["targets"] = model._densegrpo_lora_targets
    if layout not in ("comfyui", "diffusers"):
        raise ValueError(f"LoRA layout must be 'comfyui' or 'diffusers', got {layout!r}")
    sd = lora_state_dict(model, prefix) if layout == "comfyui" else peft_state_dict(model, prefix)
    if layout == "diffusers":
        meta["layout"] = "diffusers: lora_A/lora_B, alpha/rank folded into lora_B"
    tensors = {k: (v if k.endswith(".alpha") else v.to(dtype)).detach().cpu().contiguous() for k, v in sd.items()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=meta))


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"LoRA file {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"LoRA path {path!r} is not a file")


def read_lora_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The str → str metadata of a safetensors LoRA file ({} if it has none), without reading the weights."""
    from safetensors import safe_open

    path = os.fspath(path)
    _check_readable(path)
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ValueError(f"{path!r} is not a readable safetensors file: {e}") from None


def load_lora(
    path: str | os.PathLike, model: nn.Module, strict: bool = True, prefix: str | LoraKeys = COMFY_PREFIX
) -> dict[str, str]:
    """Copy a LoRA file (save_lora's ComfyUI or diffusers layout) into a model that already carries LoRA layers.

    Every key and shape is checked before anything is copied; errors name the key. With strict, keys missing
    from the file or not belonging to an adapted module are errors; otherwise only the matching modules load.
    A missing `.alpha` means α = r (ComfyUI's scale 1.0). Returns the file's metadata.
    """
    import safetensors.torch

    path = os.fspath(path)
    _check_readable(path)
    try:
        tensors = safetensors.torch.load_file(path)
    except Exception as e:
        raise ValueError(f"{path!r} is not a readable safetensors file: {e}") from None
    metadata = read_lora_metadata(path)
    layers = _lora_layers(model)
    layout = "comfyui"
    if any(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors):  # diffusers/peft layout
        tensors, layout = _from_peft_layout(tensors, layers, _plain(prefix)), "diffusers"
    bases = {name: _key(prefix, name, layout) for name in layers}
    expected = {f"{bases[name]}.{part}" for name in layers for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    unexpected, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
    if strict and (unexpected or missing):
        raise ValueError(
            f"LoRA file {path!r} does not fit {type(model).__name__}: "
            f"missing keys {missing[:8]}{' …' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}"
        )
    copies = []  # (parameter, tensor) pairs, applied only after every check passed
    for name, layer in layers.items():
        down_key, up_key = f"{bases[name]}.lora_down.weight", f"{bases[name]}.lora_up.weight"
        if down_key not in tensors and up_key not in tensors:
            continue
        if down_key not in tensors or up_key not in tensors:
            raise ValueError(f"LoRA file {path!r} has only one of {down_key!r} and {up_key!r}")
        rank, alpha = _rank_and_alpha(layer, name)
        down, up = tensors[down_key], tensors[up_key]
        target_down, target_up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        if down.ndim == 2 and down.shape[0] != rank:
            raise ValueError(
                f"LoRA file {path!r}: {down_key!r} has rank {down.shape[0]}, the model's LoRA has "
                f"rank {rank}; inject with rank={down.shape[0]}"
            )
        for key, tensor, target in ((down_key, down, target_down), (up_key, up, target_up)):
            if tensor.shape != target.shape:
                raise ValueError(
                    f"LoRA file {path!r}: {key!r} has shape {tuple(tensor.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
        alpha_key = f"{bases[name]}.alpha"
        for key in (down_key, up_key, alpha_key):
            if key in tensors and not torch.isfinite(tensors[key].float()).all():
                raise ValueError(
                    f"LoRA file {path!r}: {key!r} holds NaN or Inf values; the file is damaged or was saved "
                    f"from a run that diverged"
                )
        file_alpha = float(tensors[alpha_key]) if alpha_key in tensors else float(rank)
        if not math.isclose(file_alpha, alpha, rel_tol=1e-6):
            raise ValueError(
                f"LoRA file {path!r}: {alpha_key!r} is {file_alpha:g}, the model's LoRA alpha is "
                f"{alpha:g}; inject with alpha={file_alpha:g}"
            )
        copies += [(target_down, down), (target_up, up)]
    if not copies:
        raise ValueError(
            f"LoRA file {path!r} has no key of an adapted module of {type(model).__name__} "
            f"(expected e.g. {min(expected)!r})"
        )
    with torch.no_grad():
        for target, tensor in copies:
            target.copy_(tensor)
    return metadata
