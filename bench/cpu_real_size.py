"""Peak allocated bytes of one DenseGRPO training iteration at SD3.5-Medium's real size, on the CPU, through
ComfyUI's own loader and the Train node's private copy, against the estimator (docs/benchmarks.md).

    cd $COMFYUI_PATH && .venv/bin/python /path/to/bench/cpu_real_size.py [--size 128 --checkpointing on,off]

The bytes of a tensor are the same on the CPU and on a GPU, so the CPU measures what the estimator predicts
for any device except the fitted activation constants. It builds ComfyUI's MMDiT at SD3.5-M's configuration
(depth 24, hidden 1536, 13 MMDiT-X self-attention blocks, qk RMS norm, 384² position table) with random
weights, hands its state dict to `comfy.sd.load_diffusion_model_state_dict` (what UNETLoader calls: ComfyUI
detects SD3.5-M and builds its own model) with weight dtype bf16 (on the CPU ComfyUI computes them in fp32,
cast per layer, as it computes fp8 weights on a GPU in bf16), then does what the Train node does (nodes.comfy_training
.private_pipeline: load, copy, offload ComfyUI's copy) and runs one Trainer iteration under torch's profiler
(profile_memory: every CPU tensor allocation and free, per stage). ≈ Peak = the job's tensors when the
iteration starts (its weight copy, LoRA, VAE copy) + the largest stage's Δpeak (the most its allocations minus
frees reached above the stage's start), as in docs/benchmarks.md.
Writes OUT/cpu_real_size.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30


def setup(comfyui: str):
    sys.path.insert(0, os.path.abspath(comfyui))
    sys.path.insert(0, ROOT)                      # our `nodes` package before ComfyUI's nodes.py
    import comfy.cli_args
    comfy.cli_args.args.cpu = True


def sd35m_state_dict(depth: int = 24, seed: int = 0) -> dict:
    """A random-weight SD3.5-M state dict in ComfyUI's key form, bf16 (`depth` < 24: a smaller twin, for a check)."""
    import comfy.ops
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from memory_table import sd35
    with torch.device("cpu"):
        net = sd35(depth, comfy.ops.disable_weight_init, min(13, depth), 384)
    net = net.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith("bias"):
                t.zero_()
            elif "ln_q" in name or "ln_k" in name or t.ndim == 1:
                t.fill_(1.0)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32).mul_(0.02))
    sd = {k: v for k, v in net.state_dict().items()}
    del net
    return sd


def taesd3(models_dir: str):
    import comfy.sd
    import comfy.utils
    sd = {}
    for part in ("encoder", "decoder"):
        for k, v in comfy.utils.load_torch_file(os.path.join(models_dir, "vae_approx", f"taesd3_{part}.safetensors")).items():
            sd[f"taesd_{part}.{k}"] = v
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.5305), torch.tensor(0.0609)
    return comfy.sd.VAE(sd=sd)


def mean_brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def measure(args, ckpt: bool, mp, vae) -> dict:
    from densegrpo_core.estimate import DeviceInfo, estimate, model_info
    from densegrpo_core.memory import StageMeter, tensor_bytes
    from densegrpo_core.trainer import TrainConfig, Trainer
    from nodes.comfy_memory import weight_dtypes
    from nodes.comfy_training import private_pipeline
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn((1, args.context_tokens, 4096), generator=g)
    conds = {"a red cube": [[ctx, {"pooled_output": torch.randn((1, 2048), generator=g)}]]}
    negative = [[torch.zeros_like(ctx), {"pooled_output": torch.zeros((1, 2048))}]]
    latent = torch.zeros((1, 16, args.size // 8, args.size // 8))
    pipe = private_pipeline(mp, vae, conds, negative, latent, "bench")
    config = TrainConfig(out_dir=os.path.join(args.out, "run"), steps=args.steps, group_size=args.group,
                         prompts_per_iteration=1, cfg_scale=args.cfg, max_batch=args.max_batch,
                         train_batch=args.group, lora_rank=args.rank, lora_alpha=float(args.rank),
                         grad_checkpointing=ckpt, iterations=1, eval_every=0, save_every=0, seed=0,
                         advantage_mode="dense_grpo", reward_batch=args.reward_batch, train_fraction=args.train_fraction)
    trainer = Trainer(config, pipe, mean_brightness, ["a red cube"])
    base = pipe.model.base
    tensors = [*base.diffusion_model.parameters(), *base.diffusion_model.buffers(), *pipe.decode.net.parameters(),
               *pipe.decode.net.buffers(), *base.model_sampling.buffers()]
    resident = tensor_bytes(tensors)
    decoder_bytes = tensor_bytes([*pipe.decode.net.parameters(), *pipe.decode.net.buffers()])
    stored, computed = weight_dtypes(mp)                   # as the Train node counts it
    info = model_info(base.diffusion_model, tuple(latent.shape[1:]), context_tokens=args.context_tokens,
                      compute_dtype=computed)
    predicted = estimate(config, info, DeviceInfo("cpu", "cpu", 0, 0), reward_model_bytes=decoder_bytes)
    trainer.meter = StageMeter("cpu", memory=True)          # torch's profiler per stage (profile_memory)
    t0 = time.perf_counter()
    metrics = trainer.iteration()
    b = predicted.breakdown
    stages = {k: metrics[f"{k}_peak_delta_bytes"] for k in ("rollout", "reward", "update")}
    largest = max(stages, key=stages.get)
    out = {"checkpointing": ckpt, "weights": stored, "computed_in": computed, "wall_s": time.perf_counter() - t0,
           "params": info.params, "weight_bytes_per_param": info.weight_bytes, "resident_bytes": resident,
           "stage_peak_delta_bytes": stages, "largest_stage": largest,
           "measured_peak_bytes": resident + stages[largest], "predicted_peak_bytes": predicted.peak_bytes,
           "predicted_stage_bytes": {k: b[f"{k}_bytes"] for k in stages}, "predicted_largest_stage": b["largest_stage"],
           "predicted_breakdown": {k: v for k, v in b.items() if isinstance(v, (int, float))},
           "reward_mean": metrics.get("reward_mean")}
    out["error"] = out["predicted_peak_bytes"] / out["measured_peak_bytes"] - 1
    del trainer, pipe
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", "."))
    p.add_argument("--models", default=None, help="folder with vae_approx/taesd3_*.safetensors (make_tiny_models.py)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench_out", "cpu_real_size"))
    p.add_argument("--size", type=int, default=128, help="image size in pixels (latent = size / 8)")
    p.add_argument("--context-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--train-fraction", type=float, default=0.5, help="share of the T steps trained")
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--reward-batch", type=int, default=2, help="images per decode + reward call")
    p.add_argument("--checkpointing", default="on", help="on, off or on,off")
    p.add_argument("--depth", type=int, default=24, help="MMDiT depth (24 = SD3.5-M; smaller only to check the script)")
    args = p.parse_args(argv)
    setup(args.comfyui)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    import comfy.model_management as mm
    import comfy.sd
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    sd = sd35m_state_dict(args.depth)
    mp = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.bfloat16})
    del sd
    print(f"ComfyUI loaded {type(mp.model).__name__} ({sum(p.numel() for p in mp.model.diffusion_model.parameters()) / 1e9:.2f} B "
          f"parameters, {next(mp.model.diffusion_model.parameters()).dtype}) in {time.perf_counter() - t0:.0f} s", flush=True)
    vae = taesd3(args.models or os.path.join(args.comfyui, "models"))
    results = []
    for word in args.checkpointing.split(","):
        r = measure(args, word.strip() == "on", mp, vae)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "predicted_breakdown"}), flush=True)
        with open(os.path.join(args.out, "cpu_real_size.json"), "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "loaded": [type(lm.model.model).__name__
                       for lm in mm.current_loaded_models if lm.model is not None], "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
