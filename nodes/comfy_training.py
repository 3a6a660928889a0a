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
import types
from collections import OrderedDict

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
    n = 0
    for name in family.comfy.block_lists:
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


def private_base_model(model_patcher, node: str):
    """A copy of the MODEL's BaseModel with its own diffusion network (patched weights) and model sampling, on
    the model's device, while ComfyUI's own copy is offloaded (comfy_memory): the weights are on the device once.

    ComfyUI loads the model with its patches; the patched weights are copied to the offload device (the CPU)
    when the model lives elsewhere, ComfyUI's copy is unloaded through its model management, and the copy then
    moves to the device. fp8 weights stay fp8 in the copy, with ComfyUI's ops that cast them per layer."""
    import comfy.model_management

    bridge.require_flow_model(model_patcher, node)
    family = comfy_family(model_patcher.model, node)
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
    if family.comfy_patch:
        COMFY_PATCHES[family.comfy_patch](private.diffusion_model, family)
    offload_comfy_copy(model_patcher)
    private.diffusion_model.to(device)
    return private


TOKENS = "_tokens:"  # cond key prefix: per-row token counts of a zero-padded sequence (CondLayout), not a model kwarg


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
    tensors = {k: v.cond for k, v in out.items() if isinstance(getattr(v, "cond", None), torch.Tensor)}
    repeatable = {k for k, v in out.items() if isinstance(v, comfy.conds.CONDCrossAttn)}
    return clone_tensors(tensors), repeatable


class CondLayout:
    """How the per-prompt conds of a job (every prompt and the negative) stack into batches, as ComfyUI batches
    conds of different token counts, fixed once so any batch — prompts and negative rows together — concatenates:

    - a cross-attention cond (ComfyUI's CONDCrossAttn: SD3's and FLUX's c_crossattn) repeats its tokens to the
      least common multiple of all token counts, as CONDCrossAttn.concat does;
    - any other token sequence (CONDRegular, e.g. Qwen-Image's c_crossattn, which ComfyUI never batches at another
      length) is zero-padded to the longest with each row's token count under `TOKENS + key`; ComfyVelocity runs
      the rows of each token count on their own, unpadded, so the model sees exactly ComfyUI's inputs."""

    def __init__(self, items: list[dict], repeatable: set[str]):
        self.target: dict[str, int] = {}
        self.padded: set[str] = set()
        for key in items[0]:
            lengths = {d[key].shape[1] for d in items if d[key].ndim == 3}
            if len(lengths) > 1:
                repeat = key in repeatable
                self.target[key] = math.lcm(*lengths) if repeat else max(lengths)
                if not repeat:
                    self.padded.add(key)

    def stack(self, items: list[dict]) -> dict:
        out = {}
        for key in items[0]:
            tensors = [d[key] for d in items]
            if key in self.padded:
                out[TOKENS + key] = torch.tensor([t.shape[1] for t in tensors for _ in range(t.shape[0])])
                tensors = [torch.nn.functional.pad(t, (0, 0, 0, self.target[key] - t.shape[1])) for t in tensors]
            elif key in self.target:
                tensors = [t.repeat(1, self.target[key] // t.shape[1], 1) for t in tensors]
            out[key] = torch.cat(tensors)
        return out


def stack_kwargs(items: list[dict]) -> dict:
    """Concatenate per-prompt conds along the batch; token sequences of different lengths are repeated to
    their least common multiple, as ComfyUI's CONDCrossAttn does."""
    return CondLayout(items, set(items[0])).stack(items)


class ComfyVelocity(torch.nn.Module):
    """The core's VelocityModel over a private BaseModel: v = (x - apply_model(x, τ, **cond)) / τ. Rows whose
    conds were zero-padded (CondLayout) run in groups of one token count each, with the padding cut off."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        counts = {k.removeprefix(TOKENS): v for k, v in cond.items() if k.startswith(TOKENS)}
        cond = {k: v for k, v in cond.items() if not k.startswith(TOKENS)}
        if not counts:
            return velocity_from_denoised(x, self.base.apply_model(x, tau, transformer_options={}, **cond), tau)
        keys = list(counts)
        per_row = torch.stack([counts[k].to(x.device) for k in keys], dim=1)  # (N, keys)
        parts, order = [], []
        for group in torch.unique(per_row, dim=0):
            rows = (per_row == group).all(dim=1).nonzero().squeeze(1)
            sub = {k: v[rows] for k, v in cond.items()}
            for k, n in zip(keys, group.tolist()):
                sub[k] = sub[k][:, :n]
            parts.append(self.base.apply_model(x[rows], tau[rows], transformer_options={}, **sub))
            order.append(rows)
        denoised = torch.cat(parts)[torch.argsort(torch.cat(order))]
        return velocity_from_denoised(x, denoised, tau)


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
    model_patcher, vae, prompt_conds: dict[str, list], negative, latent: torch.Tensor, node: str
) -> FlowPipeline:
    """A FlowPipeline the job thread may train: private model, private VAE, prompts pre-encoded."""
    base = private_base_model(model_patcher, node)
    kwargs, repeatable = {}, set()
    for p, c in prompt_conds.items():
        kwargs[p], keys = _conditioning(base, c, latent, node, "prompts")
        repeatable |= keys
    null, keys = _conditioning(base, negative, latent, node, "negative_prompt")
    layout = CondLayout([*kwargs.values(), null], repeatable | keys)
    ms = base.model_sampling
    latent_format = model_patcher.get_model_object("latent_format")

    def encode(prompts):
        return layout.stack([kwargs[p] for p in prompts])

    def null_cond(n):
        return layout.stack([null] * n)

    family = comfy_family(base, node)
    return FlowPipeline(
        model=ComfyVelocity(base),
        encode=encode,
        null_cond=null_cond,
        decode=PrivateDecoder(vae, latent_format),
        latent_shape=tuple(latent.shape[1:]),
        arch=family.comfy.preset,
        default_shift=float(getattr(ms, "shift", family.default_shift)),
        default_cfg=family.default_cfg,
        info={"name": type(base).__name__},
        lora_module=base.diffusion_model,
    )
