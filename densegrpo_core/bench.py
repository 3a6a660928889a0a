"""Cost benchmark: seconds and peak memory per stage (rollout, decode + reward, update) of real trainer
iterations, per advantage mode, group size and memory setting; NFE per trajectory (fused vs naive, MATH.md §9).

Models: the shipped toy DiT (`arch="toy"`), the core joint-attention DiT with random weights at any size
(`"dit"`, SD3.5-Medium's dimensions by default, see dit.py), or ComfyUI's own MMDiT at SD3.5-Medium's
configuration when ComfyUI is importable (`"mmdit"`; `"auto"` picks it when it can). Decoder and reward are
random stand-ins of the real ones' shape (an SD3-VAE-sized conv decoder, a ViT-H/14 image tower) for the
large models, small ones otherwise, and the toy's own for the toy.

Writes `bench.json` and a Markdown report `bench.md`. Every figure is measured, except the columns that say
"predicted" (NFE counts, estimate.py). Memory: see memory.StageMeter (CUDA max_memory_allocated; on the
CPU torch's profiler over one extra iteration, so that timings are taken without it).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .advantages import ADVANTAGE_MODES

MiB = 2 ** 20
STAGES = ("rollout", "reward", "update")


@dataclass
class BenchConfig:
    out: str = "bench_out"              # folder for bench.json and bench.md
    arch: str = "toy"                   # toy | dit (core DiT, random weights) | mmdit (ComfyUI's MMDiT) | auto
    width: int | None = None            # DiT hidden size (None: SD3.5-M's 1536; mmdit: 64·depth, fixed by ComfyUI)
    depth: int | None = None            # DiT blocks (None: 24)
    heads: int | None = None            # attention heads (None: width / 64)
    latent_size: int | None = None      # latent side (None: 64, i.e. 512 px)
    latent_channels: int | None = None  # latent channels (None: 16)
    context_tokens: int | None = None   # text tokens (None: 154)
    steps: int = 10                     # T
    group_sizes: tuple[int, ...] = (8,)  # G values to run
    prompts: int = 4                    # prompts per iteration (B = prompts · G)
    modes: tuple[str, ...] | None = None  # None: all four for toy, flow_grpo and dense_grpo otherwise
    grad_checkpointing: tuple[bool, ...] = (False,)  # settings to run
    max_batch: int = 256                # rows per rollout forward call
    train_batch: int = 8                # trajectories per update minibatch
    lora_rank: int = 32                 # LoRA r (α = 2r)
    uncond_grad: bool = False           # backpropagate through CFG's unconditional pass too (default: detached)
    dtype: str = "float32"              # float32 | bfloat16 (weights cast to bf16 and autocast, like ComfyUI's models)
    device: str = "cpu"
    iterations: int = 3                 # timed iterations per run, after one warm-up
    memory: bool = True                 # peak memory per stage (CPU: one extra profiled iteration per run)
    compare_naive: bool | None = None   # also time fused vs naive rollouts (None: toy only)
    stand_ins: str = "auto"             # decoder/reward stand-ins: full (SD3 VAE, ViT-H sized) | small | auto (width)
    fit_constants: bool = False         # refit estimate.py's constants for this device kind and write them there
    budget_s: float | None = None       # skip the remaining runs once the projected total would exceed this
    seed: int = 0                       # random weights, prompts and noise

    def __post_init__(self):
        self.group_sizes = tuple(int(g) for g in self.group_sizes)
        self.grad_checkpointing = tuple(bool(c) for c in self.grad_checkpointing)
        if self.arch not in ("toy", "dit", "mmdit", "auto"):
            raise ValueError(f"arch must be toy, dit, mmdit or auto, got {self.arch!r}")
        if self.modes is not None:
            unknown = [m for m in self.modes if m not in ADVANTAGE_MODES]
            if unknown:
                raise ValueError(f"unknown modes {unknown}; expected some of {', '.join(ADVANTAGE_MODES)}")
        if not self.group_sizes or min(self.group_sizes) < 2:
            raise ValueError(f"group sizes must be >= 2, got {self.group_sizes}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


def tiny_config(out: str, device: str = "cpu") -> BenchConfig:
    """A seconds-long smoke run of the whole bench (tests, and a check before a GPU run)."""
    return BenchConfig(out=out, arch="dit", width=32, depth=2, heads=2, latent_size=8, latent_channels=4,
                       context_tokens=4, steps=3, group_sizes=(2,), prompts=1, grad_checkpointing=(False, True),
                       max_batch=8, train_batch=2, lora_rank=4, device=device, iterations=1)


# ----------------------------------------------------------------------------------- stand-ins
class StandInReward(nn.Module):
    """Stand-in for an image reward model: a random ViT image tower (ViT-H/14 at 224 px, PickScore's / HPSv2's,
    when full) and a float32 linear score. `(images (B, H, W, 3) in [0, 1], prompts) -> (B,)` float32."""

    def __init__(self, image_size: int, patch: int, layers: int, heads: int, hidden: int, mlp: int):
        super().__init__()
        from torchvision.models.vision_transformer import VisionTransformer
        self.image_size = image_size
        self.vit = VisionTransformer(image_size, patch, layers, heads, hidden, mlp)
        self.vit.heads = nn.Identity()
        self.head = nn.Linear(hidden, 1)

    @classmethod
    def full(cls) -> "StandInReward":
        return cls(224, 14, 32, 16, 1280, 5120)

    @classmethod
    def small(cls) -> "StandInReward":
        return cls(32, 8, 2, 2, 32, 64)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, prompts) -> torch.Tensor:
        dtype = self.vit.conv_proj.weight.dtype
        x = F.interpolate(images.movedim(-1, 1).float(), size=(self.image_size, self.image_size), mode="bilinear",
                          antialias=True, align_corners=False)                  # (B, 3, s, s)
        return self.head(self.vit(x.to(dtype)).float()).squeeze(-1)          # (B,)


def _stand_ins(full: bool, latent_channels: int):
    from .dit import LatentDecoder
    if full:
        return LatentDecoder(latent_channels), StandInReward.full()
    return LatentDecoder(latent_channels, channels=(16, 8), convs_per_level=1), StandInReward.small()


# -------------------------------------------------------------------------------------- models
def _import_comfy_mmdit():
    """ComfyUI's MMDiT class and its `operations` without initialisation (ImportError if ComfyUI is absent)."""
    import comfy.cli_args
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True          # before model_management probes for a GPU
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    return MMDiT, comfy.ops.disable_weight_init


def comfy_available() -> bool:
    try:
        _import_comfy_mmdit()
        return True
    except Exception:                   # noqa: BLE001 - ComfyUI absent or failing to import: use the core DiT
        return False


class ComfyMMDiTVelocity(nn.Module):
    """ComfyUI's MMDiT as a VelocityModel: its output is the flow velocity, its timestep 1000·τ (SD3)."""

    def __init__(self, diffusion_model: nn.Module):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.diffusion_model(x, tau * 1000.0, y=cond["y"], context=cond["context"])


def comfy_mmdit(depth: int, dit_cfg, device, dtype) -> nn.Module:
    """ComfyUI's MMDiT with SD3.5-Medium's configuration at `depth` (hidden 64·depth), random weights."""
    MMDiT, operations = _import_comfy_mmdit()
    model = MMDiT(input_size=None, patch_size=dit_cfg.patch_size, in_channels=dit_cfg.latent_channels, depth=depth,
                  adm_in_channels=dit_cfg.pooled_dim, out_channels=dit_cfg.latent_channels,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": dit_cfg.context_dim, "out_features": 64 * depth}},
                  num_patches=384 * 384, pos_embed_max_size=384, pos_embed_scaling_factor=None, qk_norm="rms",
                  x_block_self_attn_layers=list(range(min(13, depth))), dtype=dtype, device=device,
                  operations=operations)
    with torch.no_grad():                      # disable_weight_init leaves the tensors uninitialised
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("bias"):
                t.zero_()
            elif "ln_q" in name or "ln_k" in name:
                t.fill_(1.0)
            else:
                t.normal_(0.0, 0.02)
    return model


def resolve_arch(cfg: BenchConfig) -> str:
    if cfg.arch == "auto":
        return "mmdit" if comfy_available() else "dit"
    return cfg.arch


def dit_config(cfg: BenchConfig):
    from .dit import DiTConfig
    width = cfg.width or 1536
    base = DiTConfig()
    small = width < 256
    return DiTConfig(latent_channels=cfg.latent_channels or base.latent_channels,
                     latent_size=cfg.latent_size or base.latent_size, width=width, depth=cfg.depth or base.depth,
                     heads=cfg.heads or max(1, width // 64), context_tokens=cfg.context_tokens or base.context_tokens,
                     context_dim=16 if small else base.context_dim, pooled_dim=8 if small else base.pooled_dim,
                     self_attn_layers=min(base.self_attn_layers, (cfg.depth or base.depth) // 2 + 1))


def _with_default_dtype(dtype: torch.dtype, build):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build()
    finally:
        torch.set_default_dtype(old)


def full_stand_ins(cfg: BenchConfig, width: int) -> bool:
    """Whether the decoder and reward stand-ins are full-size (SD3 VAE, ViT-H/14) rather than small."""
    return cfg.stand_ins == "full" or (cfg.stand_ins == "auto" and width >= 1024)


def build_pipeline(cfg: BenchConfig, arch: str):
    """(FlowPipeline, training prompts, reward) with fresh weights seeded by cfg.seed."""
    from .pipeline import FlowPipeline, load_pipeline
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    torch.manual_seed(cfg.seed)
    if arch == "toy":
        from .rewards import get_reward
        pipe, prompts, _ = load_pipeline("toy", cfg.device)
        pipe.model.to(dtype)
        return pipe, prompts, get_reward("toy")
    from .dit import DiT, RandomTextEncoder
    dcfg = dit_config(cfg)
    with torch.device(cfg.device):
        if arch == "mmdit":
            depth = cfg.depth or 24
            net = comfy_mmdit(depth, dcfg, cfg.device, dtype)
            model, lora_module = ComfyMMDiTVelocity(net), net
            dcfg = dataclasses.replace(dcfg, width=64 * depth, depth=depth, heads=depth)
        else:
            model, lora_module = _with_default_dtype(dtype, lambda: DiT(dcfg)), None
        decoder, reward = _stand_ins(full_stand_ins(cfg, dcfg.width), dcfg.latent_channels)
    decoder.to(dtype=dtype)
    reward.vit.to(dtype=dtype)
    encoder = RandomTextEncoder(dcfg, cfg.device)
    pipe = FlowPipeline(model=model, encode=encoder, null_cond=encoder.null, decode=decoder,
                        latent_shape=dcfg.latent_shape, arch="mmdit", default_shift=3.0, default_cfg=4.5,
                        info={"name": arch}, lora_module=lora_module)
    return pipe, [f"bench prompt {i}" for i in range(64)], reward


# ------------------------------------------------------------------------------------------ runs
def _train_config(cfg: BenchConfig, out: str, mode: str, group_size: int, checkpointing: bool):
    from .trainer import TrainConfig
    return TrainConfig(out_dir=out, device=cfg.device, dtype=cfg.dtype, advantage_mode=mode, steps=cfg.steps,
                       group_size=group_size, prompts_per_iteration=cfg.prompts, iterations=10 ** 6,
                       max_batch=cfg.max_batch, train_batch=cfg.train_batch, lora_rank=cfg.lora_rank,
                       lora_alpha=2.0 * cfg.lora_rank, grad_checkpointing=checkpointing, save_every=0, eval_every=0,
                       seed=cfg.seed, uncond_grad=cfg.uncond_grad)


def resident_bytes(trainer) -> dict:
    """Bytes of what stays allocated between stages: network weights, LoRA, optimizer state, decoder, reward."""
    from .memory import offloadable_modules, optimizer_state_bytes, tensor_bytes
    net = trainer.pipe.model
    lora_ids = {id(p) for p in trainer.params}
    weights = tensor_bytes([*(p for p in net.parameters() if id(p) not in lora_ids), *net.buffers()])
    others = offloadable_modules(trainer.pipe.decode, trainer.reward, exclude=(net,))
    return {"weights_bytes": weights, "lora_bytes": tensor_bytes(trainer.params),
            "optimizer_bytes": optimizer_state_bytes(trainer.optimizer),
            "reward_models_bytes": tensor_bytes([t for m in others for t in [*m.parameters(), *m.buffers()]])}


def _mean(ms: list[dict], key: str):
    vals = [m[key] for m in ms if m.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def measure_run(cfg: BenchConfig, arch: str, mode: str, group_size: int, checkpointing: bool) -> dict:
    """One trainer on fresh weights: a warm-up iteration, `iterations` timed ones, and (CPU) one profiled one."""
    from .estimate import model_info
    from .trainer import Trainer
    pipe, prompts, reward = build_pipeline(cfg, arch)
    tcfg = _train_config(cfg, os.path.join(cfg.out, "runs", f"{mode}_G{group_size}_ckpt{int(checkpointing)}"),
                         mode, group_size, checkpointing)
    trainer = Trainer(tcfg, pipe, reward, prompts)
    cpu = trainer.device.type == "cpu"
    trainer.meter.memory = cfg.memory and not cpu
    trainer.iteration()                                                       # warm-up
    timed = [trainer.iteration() for _ in range(cfg.iterations)]
    profiled = []
    if cfg.memory and cpu:
        trainer.meter.memory = True
        profiled = [trainer.iteration()]
    mem = profiled or timed
    run = {"mode": mode, "group_size": group_size, "grad_checkpointing": checkpointing, "uncond_grad": cfg.uncond_grad,
           "max_batch": trainer.max_batch, "config": tcfg.to_dict(),
           "model": dataclasses.asdict(model_info(trainer.model, pipe.latent_shape,
                                                  context_tokens=_context_tokens(pipe, prompts))),
           **{k: _mean(timed, k) for k in ("iteration_s", "rollout_s", "reward_s", "update_s", "nfe_per_trajectory",
                                            "optimizer_steps", "skipped_samples")},
           **resident_bytes(trainer)}
    for stage in STAGES:
        for kind in ("peak_bytes", "peak_delta_bytes"):
            vals = [m[f"{stage}_{kind}"] for m in mem if f"{stage}_{kind}" in m]
            run[f"{stage}_{kind}"] = max(vals) if vals else None
    run["peak_bytes"] = _peak(run, cpu)
    return run


def _context_tokens(pipe, prompts) -> int:
    cond = pipe.encode(prompts[:1])
    return cond["context"].shape[1] if isinstance(cond, dict) and "context" in cond else 0


def _peak(run: dict, cpu: bool):
    """Absolute peak: measured on CUDA; on the CPU the resident tensors plus the largest stage's measured peak."""
    if not cpu:
        vals = [run[f"{s}_peak_bytes"] for s in STAGES if run.get(f"{s}_peak_bytes") is not None]
        return max(vals) if vals else None
    deltas = [run[f"{s}_peak_delta_bytes"] for s in STAGES if run.get(f"{s}_peak_delta_bytes") is not None]
    if not deltas:
        return None
    return sum(run[k] for k in ("weights_bytes", "lora_bytes", "optimizer_bytes", "reward_models_bytes")) + max(deltas)


def time_rollouts(cfg: BenchConfig, arch: str) -> dict:
    """Fused sweep vs naive path on the same noise: measured NFE, forward calls and seconds (MATH.md §9)."""
    from .rollout import fused_rollout, naive_rollout, nfe_per_trajectory
    from .schedule import FLOW_GRPO_NOISE_LEVEL, flow_grid, sde_noise_scales
    pipe, prompts, _ = build_pipeline(cfg, arch)
    G = cfg.group_sizes[0]
    tau = flow_grid(cfg.steps, pipe.default_shift)
    sigmas = sde_noise_scales(torch.full((cfg.steps,), FLOW_GRPO_NOISE_LEVEL), tau)
    batch = [prompts[i % len(prompts)] for i in range(cfg.prompts) for _ in range(G)]
    x_T = torch.randn((len(batch), *pipe.latent_shape), generator=torch.Generator().manual_seed(0)).to(cfg.device)
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    out = {}
    for name, fn in (("fused", fused_rollout), ("naive", naive_rollout)):
        def once():
            guide = pipe.guide(batch, pipe.default_cfg, cfg.max_batch, cfg.device)
            with torch.autocast(torch.device(cfg.device).type, dtype=dtype, enabled=dtype != torch.float32):
                return fn(guide, x_T, tau, sigmas, torch.Generator().manual_seed(1))
        once()                                                                # warm-up
        t0 = time.perf_counter()
        for _ in range(cfg.iterations):
            ro = once()
        out[name] = {"nfe_per_trajectory": ro.nfe_per_trajectory, "forward_calls": ro.forward_calls,
                     "predicted_nfe": nfe_per_trajectory(cfg.steps, fused=name == "fused"),
                     "seconds": (time.perf_counter() - t0) / cfg.iterations}
    return out


def run_plan(cfg: BenchConfig) -> list[tuple[str, int, bool]]:
    """(mode, G, checkpointing) of every run, in order: small G first, so a budget cuts the largest."""
    modes = cfg.modes or (ADVANTAGE_MODES if cfg.arch == "toy" else ("flow_grpo", "dense_grpo"))
    return [(mode, G, ckpt) for G in cfg.group_sizes for ckpt in cfg.grad_checkpointing for mode in modes]


def _projected_s(cfg: BenchConfig, runs: list[dict], plan_item, device) -> float | None:
    """Seconds the next run will take (warm-up + timed + profiled iterations), from the runs so far."""
    from .estimate import ModelInfo, constants_for, estimate, fit_constants
    ok = [r for r in runs if r.get("iteration_s")]
    if not ok:
        return None
    mode, G, ckpt = plan_item
    constants = fit_constants([_record(r) for r in ok], constants_for(device.kind), "projection")
    est = estimate(_train_config(cfg, "", mode, G, ckpt), ModelInfo(**ok[-1]["model"]), device, constants)
    return est.seconds_per_iteration * (cfg.iterations + 1 + (cfg.memory and device.kind == "cpu"))


def _record(run: dict) -> dict:
    keys = ("rollout_s", "reward_s", "update_s", "rollout_peak_delta_bytes", "reward_peak_delta_bytes",
            "update_peak_delta_bytes")
    return {"config": run["config"], "model": run["model"], **{k: run.get(k) for k in keys}}


def fit_from_results(results: list[dict]):
    """(device kind, Constants) fitted to the finished runs of bench.json results from one device kind."""
    from .estimate import constants_for, fit_constants
    kinds = {r["device"]["kind"] for r in results}
    if len(kinds) != 1:
        raise ValueError(f"bench results from one device kind only, got {sorted(kinds)}")
    kind = kinds.pop()
    records = [_record(run) for r in results for run in r["runs"] if not run.get("error")]
    d, first = results[0]["device"], results[0]["model"]
    source = (f"{d['name']}, {results[0]['arch']} width {first['width']} depth {first['depth']}, "
              f"{results[0]['config']['dtype']}, {len(records)} runs, {time.strftime('%Y-%m-%d')}")
    return kind, fit_constants(records, constants_for(kind), source)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# ----------------------------------------------------------------------------------------- report
def _ratios(runs: list[dict]) -> list[dict]:
    """DenseGRPO / Flow-GRPO per (G, checkpointing): measured rollout and iteration time vs the NFE prediction."""
    out = []
    for d in (r for r in runs if r["mode"] == "dense_grpo" and r.get("rollout_s")):
        f = next((r for r in runs if r["mode"] == "flow_grpo" and r.get("rollout_s")
                  and (r["group_size"], r["grad_checkpointing"]) == (d["group_size"], d["grad_checkpointing"])), None)
        if f:
            out.append({"group_size": d["group_size"], "grad_checkpointing": d["grad_checkpointing"],
                        "rollout_time_measured": d["rollout_s"] / f["rollout_s"],
                        "rollout_nfe_predicted": d["nfe_per_trajectory"] / f["nfe_per_trajectory"],
                        "iteration_time_measured": d["iteration_s"] / f["iteration_s"]})
    return out


def _mib(x) -> str:
    return "–" if x is None else f"{x / MiB:.1f}"


def _sec(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def markdown(result: dict) -> str:
    cfg, dev, m = result["config"], result["device"], result["model"]
    cpu = dev["kind"] == "cpu"
    lines = [f"{result['model_description']}: width {m['width']}, depth {m['depth']}, {m['tokens']} image + "
             f"{m['context_tokens']} text tokens, {m['params'] / 1e6:.1f} M parameters; T = {cfg['steps']}, "
             f"{cfg['prompts']} prompt(s) × G, CFG on, {cfg['dtype']}, max_batch {cfg['max_batch']}, "
             f"train_batch {cfg['train_batch']}, LoRA r = {cfg['lora_rank']}",
             f"Device: {dev['name']} ({dev['kind']}, torch {result['torch']}, {result['threads']} thread(s))", ""]
    if result.get("rollouts"):
        lines += ["| rollout | NFE / trajectory (measured) | predicted | forward calls | seconds |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['nfe_per_trajectory']:.0f} | {v['predicted_nfe']} | {v['forward_calls']} | "
                  f"{v['seconds']:.3f} |" for k, v in result["rollouts"].items()]
        lines.append("")
    peak_name = "peak (MiB)" if not cpu else "≈ peak (MiB)"
    lines += [f"| mode | G | grad ckpt | s / iteration | rollout s | decode+reward s | update s | NFE / traj. | "
              f"rollout Δpeak | reward Δpeak | update Δpeak | {peak_name} | predicted s | predicted peak |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        if r.get("error"):
            lines.append(f"| {r['mode']} | {r['group_size']} | {'on' if r['grad_checkpointing'] else 'off'} | "
                         f"{r['error']} |" + " |" * 10)
            continue
        p = r.get("predicted", {})
        lines.append(f"| {r['mode']} | {r['group_size']} | {'on' if r['grad_checkpointing'] else 'off'} | "
                     f"{_sec(r['iteration_s'])} | {_sec(r['rollout_s'])} | {_sec(r['reward_s'])} | "
                     f"{_sec(r['update_s'])} | "
                     f"{r['nfe_per_trajectory']:.0f} | {_mib(r['rollout_peak_delta_bytes'])} | "
                     f"{_mib(r['reward_peak_delta_bytes'])} | {_mib(r['update_peak_delta_bytes'])} | "
                     f"{_mib(r['peak_bytes'])} | {_sec(p.get('seconds_per_iteration'))} | "
                     f"{_mib(p.get('peak_bytes'))} |")
    done = [r for r in result["runs"] if not r.get("error")]
    if done:
        r = done[0]
        lines += ["", f"Resident (MiB): weights {_mib(r['weights_bytes'])}, LoRA {_mib(r['lora_bytes'])}, optimizer "
                      f"{_mib(r['optimizer_bytes'])}, decoder + reward {_mib(r['reward_models_bytes'])}. "
                      "Δpeak = the most memory a stage held above what was allocated when it began."]
    for q in result["ratios"]:
        lines.append(f"- G = {q['group_size']}, checkpointing {'on' if q['grad_checkpointing'] else 'off'}: "
                     f"DenseGRPO / Flow-GRPO rollout time {q['rollout_time_measured']:.2f}× (NFE predicts "
                     f"{q['rollout_nfe_predicted']:.2f}×), whole iteration {q['iteration_time_measured']:.2f}×")
    if result.get("rollouts"):
        ro = result["rollouts"]
        speed = ro["naive"]["seconds"] / ro["fused"]["seconds"]
        lines.append(f"- fused sweep {speed:.2f}× the speed of the naive path")
    if result.get("skipped"):
        lines.append(f"- skipped (time budget): {', '.join(result['skipped'])}")
    lines.append(f"- estimator constants: {result['constants']['source']}")
    return "\n".join(lines) + "\n"


def _device_info(device: str) -> dict:
    from .estimate import device_info
    return dataclasses.asdict(device_info(device))


def run_bench(cfg: BenchConfig) -> dict:
    """Run every (mode, G, checkpointing) of the plan; write bench.json and bench.md into cfg.out."""
    from .estimate import DeviceInfo, ModelInfo, estimate, write_constants
    os.makedirs(cfg.out, exist_ok=True)
    arch = resolve_arch(cfg)
    if arch == "mmdit" and not comfy_available():
        raise ValueError("arch 'mmdit' needs ComfyUI importable (run from the ComfyUI folder or add it to "
                         "PYTHONPATH); use --arch dit for the core DiT of the same size")
    device = DeviceInfo(**_device_info(cfg.device))
    start = time.perf_counter()
    runs, skipped = [], []
    for item in run_plan(cfg):
        mode, G, ckpt = item
        name = f"{mode} G={G} ckpt={'on' if ckpt else 'off'}"
        projected = _projected_s(cfg, runs, item, device) if cfg.budget_s else None
        if projected is not None and time.perf_counter() - start + projected > cfg.budget_s:
            skipped.append(f"{name} (~{projected:.0f} s)")
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            runs.append(measure_run(cfg, arch, mode, G, ckpt))
        except RuntimeError as e:
            if not _is_oom(e):
                raise
            runs.append({"mode": mode, "group_size": G, "grad_checkpointing": ckpt, "error": "out of memory"})
        _free(cfg.device)                                    # after the except block has dropped its frames
    ok = [r for r in runs if not r.get("error")]
    if not ok:
        raise RuntimeError("no bench run finished")
    result = {"format": "densegrpo.bench/2", "device": dataclasses.asdict(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "python": platform.python_version(), "arch": arch,
              "model_description": describe(cfg, arch, ok[0]["model"]["width"]), "model": ok[0]["model"],
              "config": dataclasses.asdict(cfg), "runs": runs, "ratios": _ratios(ok), "skipped": skipped}
    _, constants = fit_from_results([result])
    for r in ok:
        est = estimate(_train_config(cfg, "", r["mode"], r["group_size"], r["grad_checkpointing"]),
                       ModelInfo(**r["model"]), device, constants, reward_model_bytes=r["reward_models_bytes"])
        r["predicted"] = {"seconds_per_iteration": est.seconds_per_iteration, "peak_bytes": est.peak_bytes}
    if cfg.fit_constants:
        write_constants(device.kind, constants)
    result.update({"constants": dataclasses.asdict(constants), "constants_written": cfg.fit_constants,
                   "wall_s": time.perf_counter() - start})
    if cfg.compare_naive or (cfg.compare_naive is None and arch == "toy"):
        result["rollouts"] = time_rollouts(cfg, arch)
    with open(os.path.join(cfg.out, "bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result)
    with open(os.path.join(cfg.out, "bench.md"), "w") as f:
        f.write(text)
    print(text)
    return result


def describe(cfg: BenchConfig, arch: str, width: int) -> str:
    if arch == "toy":
        return "Toy DiT (shipped weights, toy decoder and reward)"
    model = "ComfyUI MMDiT (SD3.5-M config, random weights)" if arch == "mmdit" else "Core DiT (dit.py, random weights)"
    return f"{model}, {'full-size' if full_stand_ins(cfg, width) else 'small'} decoder/reward stand-ins"
