"""Peak memory (and seconds) of DenseGRPO training iterations at real model sizes, through ComfyUI's own loader
and the Train node's private copy, against the estimator (docs/benchmarks.md, "Real sizes").

    cd $COMFYUI_PATH && .venv/bin/python /path/to/bench/real_size.py --device cpu   # SD3.5-M, small resolution
    cd $COMFYUI_PATH && .venv/bin/python /path/to/bench/real_size.py --device cuda --arch sd35m --size 512
    cd $COMFYUI_PATH && .venv/bin/python /path/to/bench/real_size.py --device cuda --arch flux-dev \\
        --weight-dtype fp8_e4m3fn --size 512 --train-batch 4 --max-batch 16

The bytes of a tensor are the same on the CPU and on a GPU, so the CPU measures what the estimator predicts
except the device's activation constants. It builds ComfyUI's MMDiT (SD3.5-M / -L) or Flux (FLUX.1-dev) with
random weights, hands the state dict to `comfy.sd.load_diffusion_model_state_dict` (what UNETLoader calls:
ComfyUI detects the model and builds its own, in the --weight-dtype UNETLoader would use), then does what the
Train node does (nodes.comfy_training.private_pipeline: load with patches, copy, offload ComfyUI's copy, move
the copy to the device) and runs Trainer iterations (the first a warm-up on CUDA).
- CPU: torch's profiler per stage (profile_memory); ≈ peak = the job's tensors when the iteration starts
  (weight copy, LoRA, VAE copy) + the largest stage's Δpeak, as in docs/benchmarks.md.
- CUDA: torch.cuda.max_memory_allocated over the timed iteration: everything on the device, so ComfyUI's own
  copy would show here if it were not offloaded (`comfy_loaded_bytes` records what ComfyUI still holds).
Writes OUT/real_size_<arch>_<weight dtype>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHT_DTYPES = {"default": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
ARCHS = {
    "sd35m": dict(ctx=154, cfg=4.5, pooled=2048),
    "sd35l": dict(ctx=154, cfg=4.5, pooled=2048),
    "flux-dev": dict(ctx=256, cfg=1.0, pooled=768),
}


def setup(comfyui: str, device: str):
    sys.path.insert(0, os.path.abspath(comfyui))
    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)  # our `nodes` package before ComfyUI's nodes.py
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"


def random_state_dict(arch: str, depth: int | None, seed: int = 0) -> dict:
    """Random weights of the architecture in ComfyUI's key form, bf16 (`depth`: a smaller twin, for checks)."""
    import comfy.ops
    from memory_table import flux_dev, sd35

    ops = comfy.ops.disable_weight_init
    if arch == "flux-dev":
        net = flux_dev(ops) if not depth else flux_dev(ops, depth, 2 * depth)
    else:
        d = depth or (24 if arch == "sd35m" else 38)
        net = sd35(d, ops, min(13, d) if arch == "sd35m" else 0, 384 if arch == "sd35m" else 192)
    net = net.to_empty(device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith("bias"):
                t.zero_()
            elif t.ndim == 1:
                t.fill_(1.0)
            else:
                t.normal_(0.0, 0.02)
    sd = dict(net.state_dict())
    del net
    return sd


def taesd3(models_dir: str):
    import comfy.sd
    import comfy.utils

    sd = {}
    for part in ("encoder", "decoder"):
        for k, v in comfy.utils.load_torch_file(
            os.path.join(models_dir, "vae_approx", f"taesd3_{part}.safetensors")
        ).items():
            sd[f"taesd_{part}.{k}"] = v
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.5305), torch.tensor(0.0609)
    return comfy.sd.VAE(sd=sd)


def mean_brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def measure(args, ckpt: bool, mp, vae) -> dict:
    from densegrpo_core.resources.estimate import DeviceInfo, estimate, model_info
    from densegrpo_core.resources.memory import StageMeter, tensor_bytes
    from densegrpo_core.training.trainer import TrainConfig, Trainer
    from nodes.comfy_memory import comfy_loaded_bytes, weight_dtypes
    from nodes.comfy_training import private_pipeline

    spec = ARCHS[args.arch]
    ctx_tokens = args.context_tokens or spec["ctx"]
    cfg = spec["cfg"] if args.cfg is None else args.cfg
    g = torch.Generator().manual_seed(1)
    extra = {"guidance": 3.5} if args.arch == "flux-dev" else {}
    ctx = torch.randn((1, ctx_tokens, 4096), generator=g)
    conds = {"a red cube": [[ctx, {"pooled_output": torch.randn((1, spec["pooled"]), generator=g), **extra}]]}
    negative = [[torch.zeros_like(ctx), {"pooled_output": torch.zeros((1, spec["pooled"])), **extra}]]
    channels = int(mp.model.latent_format.latent_channels)
    latent = torch.zeros((1, channels, args.size // 8, args.size // 8), device=mp.load_device)
    pipe = private_pipeline(mp, vae, conds, negative, latent, "bench")
    pipe.decode.to(mp.load_device)
    config = TrainConfig(
        out_dir=os.path.join(args.out, "run"),
        device=str(mp.load_device),
        steps=args.steps,
        group_size=args.group,
        prompts_per_iteration=1,
        cfg_scale=cfg,
        max_batch=args.max_batch,
        train_batch=args.train_batch or args.group,
        lora_rank=args.rank,
        lora_alpha=float(args.rank),
        grad_checkpointing=ckpt,
        iterations=args.iterations + 1,
        eval_every=0,
        save_every=0,
        seed=0,
        advantage_mode="dense_grpo",
        reward_batch=args.reward_batch,
        train_fraction=args.train_fraction,
    )
    trainer = Trainer(config, pipe, mean_brightness, ["a red cube"])
    base = pipe.model.base
    decoder = [*pipe.decode.net.parameters(), *pipe.decode.net.buffers()]
    resident = tensor_bytes([*base.diffusion_model.parameters(), *base.diffusion_model.buffers(), *decoder])
    stored, computed = weight_dtypes(mp)  # as the Train node counts it
    info = model_info(base.diffusion_model, tuple(latent.shape[1:]), context_tokens=ctx_tokens, compute_dtype=computed)
    kind = "cuda" if mp.load_device.type == "cuda" else "cpu"
    predicted = estimate(config, info, DeviceInfo(kind, kind, 0, 0), reward_model_bytes=tensor_bytes(decoder))
    cuda = kind == "cuda"
    if cuda:
        trainer.iteration()  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    else:
        trainer.meter = StageMeter("cpu", memory=True)  # torch's profiler per stage (profile_memory)
    seconds = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        metrics = trainer.iteration()
        seconds.append(time.perf_counter() - t0)
    stages = {k: metrics.get(f"{k}_peak_delta_bytes") for k in ("rollout", "reward", "update")}
    largest = max(stages, key=lambda k: stages[k] or 0)
    measured = torch.cuda.max_memory_allocated() if cuda else resident + stages[largest]
    b = predicted.breakdown
    out = {
        "arch": args.arch,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "checkpointing": ckpt,
        "weights": stored,
        "computed_in": computed,
        "s_per_iteration": sum(seconds) / len(seconds),
        "params": info.params,
        "resident_bytes": resident,
        "stage_peak_delta_bytes": stages,
        "largest_stage": largest,
        "measured_peak_bytes": measured,
        "predicted_peak_bytes": predicted.peak_bytes,
        "predicted_s_per_iteration": predicted.seconds_per_iteration,
        "predicted_stage_bytes": {k: b[f"{k}_bytes"] for k in stages},
        "predicted_largest_stage": b["largest_stage"],
        "predicted_breakdown": {k: v for k, v in b.items() if isinstance(v, (int, float))},
        "comfy_loaded_bytes": comfy_loaded_bytes(mp),
        "reward_mean": metrics.get("reward_mean"),
    }
    if cuda:
        out["start_bytes"] = start_bytes
    out["error"] = out["predicted_peak_bytes"] / out["measured_peak_bytes"] - 1
    del trainer, pipe
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", "."))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--arch", choices=sorted(ARCHS), default="sd35m")
    p.add_argument(
        "--weight-dtype",
        choices=sorted(WEIGHT_DTYPES),
        default="default",
        help="UNETLoader's weight_dtype (default = bf16 here)",
    )
    p.add_argument("--models", default=None, help="folder with vae_approx/taesd3_*.safetensors (make_tiny_models.py)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench_out", "real_size"))
    p.add_argument("--size", type=int, default=128, help="image size in pixels (latent = size / 8)")
    p.add_argument("--context-tokens", type=int, default=None, help="text tokens (default: 154 SD3.5, 256 FLUX)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default: 4.5 SD3.5, 1.0 FLUX.1-dev)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--train-batch", type=int, default=None, help="default: G")
    p.add_argument("--train-fraction", type=float, default=1.0, help="share of the T steps trained")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--reward-batch", type=int, default=2, help="images per decode + reward call")
    p.add_argument("--iterations", type=int, default=1, help="timed iterations (CUDA: after one warm-up)")
    p.add_argument("--checkpointing", default="on", help="on, off or on,off")
    p.add_argument(
        "--depth", type=int, default=None, help="smaller twin (MMDiT depth / Flux double blocks), for checks"
    )
    args = p.parse_args(argv)
    setup(args.comfyui, args.device)
    if args.device == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    import comfy.sd

    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    sd = random_state_dict(args.arch, args.depth)
    mp = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": WEIGHT_DTYPES[args.weight_dtype]})
    del sd
    n = sum(p.numel() for p in mp.model.diffusion_model.parameters())
    print(
        f"ComfyUI loaded {type(mp.model).__name__} ({n / 1e9:.2f} B parameters, "
        f"{next(mp.model.diffusion_model.parameters()).dtype}) in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    vae = taesd3(args.models or os.path.join(args.comfyui, "models"))
    path = os.path.join(args.out, f"real_size_{args.arch}_{args.weight_dtype}_{args.device}.json")
    results = []
    for word in args.checkpointing.split(","):
        try:
            r = measure(args, word.strip() == "on", mp, vae)
        except torch.OutOfMemoryError as e:
            r = {"checkpointing": word.strip() == "on", "out_of_memory": str(e).splitlines()[0]}
            torch.cuda.empty_cache()
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "predicted_breakdown"}), flush=True)
        with open(path, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
