"""Running the benchmark: real trainer iterations per (mode, G, checkpointing), timed and memory-profiled per
stage (memory.StageMeter: CUDA max_memory_allocated; on the CPU torch's profiler over one extra iteration, so
that timings are taken without it), fused vs naive rollouts, the estimator's constants refitted from them."""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import sys
import time

import torch

from ...method.advantages import ADVANTAGE_MODES
from ...method.rollout import fused_rollout, naive_rollout, predicted_nfe
from ...method.schedule import FLOW_GRPO_NOISE_LEVEL, flow_grid, sde_noise_scales
from ...resources.estimate import (
    DeviceInfo,
    ModelInfo,
    constants_for,
    device_info,
    estimate,
    model_info,
    write_constants,
)
from ...resources.memory import offloadable_modules, optimizer_state_bytes, tensor_bytes
from ...training.trainer import TrainConfig, Trainer
from ...util.atomic import atomic_write_json, atomic_write_text
from .config import STAGES, BenchConfig
from .fit import fit_constants
from .models import build_pipeline, describe
from .report import markdown, ratios


# ------------------------------------------------------------------------------------------ runs
def _train_config(config: BenchConfig, out: str, mode: str, group_size: int, checkpointing: bool):
    return TrainConfig(
        out_dir=out,
        device=config.device,
        dtype=config.dtype,
        advantage_mode=mode,
        steps=config.steps,
        group_size=group_size,
        prompts_per_iteration=config.prompts,
        iterations=10**6,
        max_batch=config.max_batch,
        train_batch=config.train_batch,
        lora_rank=config.lora_rank,
        lora_alpha=2.0 * config.lora_rank,
        grad_checkpointing=checkpointing,
        save_every=0,
        eval_every=0,
        seed=config.seed,
        uncond_grad=config.uncond_grad,
    )


def resident_bytes(trainer) -> dict:
    """Bytes of what stays allocated between stages: network weights, LoRA, optimizer state, decoder, reward."""
    net = trainer.pipe.model
    lora_ids = {id(p) for p in trainer.params}
    weights = tensor_bytes([*(p for p in net.parameters() if id(p) not in lora_ids), *net.buffers()])
    others = offloadable_modules(trainer.pipe.decode, trainer.reward, exclude=(net,))
    return {
        "weights_bytes": weights,
        "lora_bytes": tensor_bytes(trainer.params),
        "optimizer_bytes": optimizer_state_bytes(trainer.optimizer),
        "reward_models_bytes": tensor_bytes([t for m in others for t in [*m.parameters(), *m.buffers()]]),
    }


def _mean(ms: list[dict], key: str):
    vals = [m[key] for m in ms if m.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def measure_run(config: BenchConfig, arch: str, mode: str, group_size: int, checkpointing: bool) -> dict:
    """One trainer on fresh weights: a warm-up iteration, `iterations` timed ones, and (CPU) one profiled one."""
    pipe, prompts, reward = build_pipeline(config, arch)
    tcfg = _train_config(
        config,
        os.path.join(config.out, "runs", f"{mode}_G{group_size}_ckpt{int(checkpointing)}"),
        mode,
        group_size,
        checkpointing,
    )
    trainer = Trainer(tcfg, pipe, reward, prompts)
    cpu = trainer.device.type == "cpu"
    trainer.meter.memory = config.memory and not cpu
    trainer.iteration()  # warm-up
    timed = [trainer.iteration() for _ in range(config.iterations)]
    profiled = []
    if config.memory and cpu:
        trainer.meter.memory = True
        profiled = [trainer.iteration()]
    mem = profiled or timed
    run = {
        "mode": mode,
        "group_size": group_size,
        "grad_checkpointing": checkpointing,
        "uncond_grad": config.uncond_grad,
        "max_batch": trainer.max_batch,
        "config": tcfg.to_dict(),
        "model": dataclasses.asdict(
            model_info(trainer.model, pipe.latent_shape, context_tokens=_context_tokens(pipe, prompts))
        ),
        **{
            k: _mean(timed, k)
            for k in (
                "iteration_s",
                "rollout_s",
                "reward_s",
                "update_s",
                "nfe_per_trajectory",
                "optimizer_steps",
                "skipped_samples",
            )
        },
        **resident_bytes(trainer),
    }
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


def time_rollouts(config: BenchConfig, arch: str) -> dict:
    """Fused sweep vs naive path on the same noise: measured NFE, forward calls and seconds (docs/method.md §9)."""
    pipe, prompts, _ = build_pipeline(config, arch)
    G = config.group_sizes[0]
    tau = flow_grid(config.steps, pipe.default_shift)
    sigmas = sde_noise_scales(torch.full((config.steps,), FLOW_GRPO_NOISE_LEVEL), tau)
    batch = [prompts[i % len(prompts)] for i in range(config.prompts) for _ in range(G)]
    x_T = torch.randn((len(batch), *pipe.latent_shape), generator=torch.Generator().manual_seed(0)).to(config.device)
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    out = {}
    for name, fn in (("fused", fused_rollout), ("naive", naive_rollout)):

        def once(fn=fn):
            guide = pipe.guide(batch, pipe.default_cfg, config.max_batch, config.device)
            with torch.autocast(torch.device(config.device).type, dtype=dtype, enabled=dtype != torch.float32):
                return fn(guide, x_T, tau, sigmas, torch.Generator().manual_seed(1))

        once()  # warm-up
        t0 = time.perf_counter()
        for _ in range(config.iterations):
            ro = once()
        out[name] = {
            "nfe_per_trajectory": ro.nfe_per_trajectory,
            "forward_calls": ro.forward_calls,
            "predicted_nfe": predicted_nfe(config.steps, fused=name == "fused"),
            "seconds": (time.perf_counter() - t0) / config.iterations,
        }
    return out


def run_plan(config: BenchConfig) -> list[tuple[str, int, bool]]:
    """(mode, G, checkpointing) of every run, in order: small G first, so a budget cuts the largest."""
    modes = config.modes or (ADVANTAGE_MODES if config.arch == "toy" else ("flow_grpo", "dense_grpo"))
    return [(mode, G, ckpt) for G in config.group_sizes for ckpt in config.grad_checkpointing for mode in modes]


def _projected_s(config: BenchConfig, runs: list[dict], plan_item, device) -> float | None:
    """Seconds the next run will take (warm-up + timed + profiled iterations), from the runs so far."""
    ok = [r for r in runs if r.get("iteration_s")]
    if not ok:
        return None
    mode, G, ckpt = plan_item
    constants = fit_constants([_record(r) for r in ok], constants_for(device.kind), "projection")
    est = estimate(_train_config(config, "", mode, G, ckpt), ModelInfo(**ok[-1]["model"]), device, constants)
    return est.seconds_per_iteration * (config.iterations + 1 + (config.memory and device.kind == "cpu"))


def _record(run: dict) -> dict:
    keys = (
        "rollout_s",
        "reward_s",
        "update_s",
        "rollout_peak_delta_bytes",
        "reward_peak_delta_bytes",
        "update_peak_delta_bytes",
    )
    return {"config": run["config"], "model": run["model"], **{k: run.get(k) for k in keys}}


def fit_from_results(results: list[dict]):
    """(device kind, Constants) fitted to the finished runs of bench.json results from one device kind."""
    kinds = {r["device"]["kind"] for r in results}
    if len(kinds) != 1:
        raise ValueError(f"bench results from one device kind only, got {sorted(kinds)}")
    kind = kinds.pop()
    records = [_record(run) for r in results for run in r["runs"] if not run.get("error")]
    d, first = results[0]["device"], results[0]["model"]
    source = (
        f"{d['name']}, {results[0]['arch']} width {first['width']} depth {first['depth']}, "
        f"{results[0]['config']['dtype']}, {len(records)} runs, {time.strftime('%Y-%m-%d')}"
    )
    return kind, fit_constants(records, constants_for(kind), source)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _device_info(device: str) -> dict:
    return dataclasses.asdict(device_info(device))


def run_bench(config: BenchConfig) -> dict:
    """Run every (mode, G, checkpointing) of the plan; write bench.json and bench.md into config.out."""
    os.makedirs(config.out, exist_ok=True)
    arch = config.arch
    device = DeviceInfo(**_device_info(config.device))
    start = time.perf_counter()
    runs, skipped = [], []
    for item in run_plan(config):
        mode, G, ckpt = item
        name = f"{mode} G={G} ckpt={'on' if ckpt else 'off'}"
        projected = _projected_s(config, runs, item, device) if config.budget_s else None
        if projected is not None and time.perf_counter() - start + projected > config.budget_s:
            skipped.append(f"{name} (~{projected:.0f} s)")
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            runs.append(measure_run(config, arch, mode, G, ckpt))
        except RuntimeError as e:
            if not _is_oom(e):
                raise
            runs.append({"mode": mode, "group_size": G, "grad_checkpointing": ckpt, "error": "out of memory"})
        _free(config.device)  # after the except block has dropped its frames
    ok = [r for r in runs if not r.get("error")]
    if not ok:
        raise RuntimeError("no bench run finished")
    result = {
        "format": "densegrpo.bench/2",
        "device": dataclasses.asdict(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "arch": arch,
        "model_description": describe(config, arch, ok[0]["model"]["width"]),
        "model": ok[0]["model"],
        "config": dataclasses.asdict(config),
        "runs": runs,
        "ratios": ratios(ok),
        "skipped": skipped,
    }
    _, constants = fit_from_results([result])
    for r in ok:
        est = estimate(
            _train_config(config, "", r["mode"], r["group_size"], r["grad_checkpointing"]),
            ModelInfo(**r["model"]),
            device,
            constants,
            reward_model_bytes=r["reward_models_bytes"],
        )
        r["predicted"] = {"seconds_per_iteration": est.seconds_per_iteration, "peak_bytes": est.peak_bytes}
    if config.fit_constants:
        write_constants(device.kind, constants)
    result.update(
        {
            "constants": dataclasses.asdict(constants),
            "constants_written": config.fit_constants,
            "wall_s": time.perf_counter() - start,
        }
    )
    if config.compare_naive or (config.compare_naive is None and arch == "toy"):
        result["rollouts"] = time_rollouts(config, arch)
    atomic_write_json(os.path.join(config.out, "bench.json"), result)
    text = markdown(result)
    atomic_write_text(os.path.join(config.out, "bench.md"), text)
    print(text)
    return result
