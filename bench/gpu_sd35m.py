"""GPU figures for docs/benchmarks.md: DenseGRPO vs Flow-GRPO LoRA training at SD3.5-Medium size, 512 px.

Run from the repository root on a CUDA machine (about 5-8 minutes on an H100/H200):

    .venv/bin/python bench/gpu_sd35m.py                      # core DiT at SD3.5-M size
    .venv/bin/python bench/gpu_sd35m.py --comfyui ~/ComfyUI  # ComfyUI's own MMDiT at SD3.5-M config instead
    .venv/bin/python bench/gpu_sd35m.py --diffusers models/stable-diffusion-3.5-medium   # a real diffusers folder

It measures, per iteration, seconds and peak memory (torch.cuda.max_memory_allocated) of the rollout,
decode + reward and update stages for flow_grpo and dense_grpo at G = 8 and 24, with and without gradient
checkpointing, bf16 weights and autocast, T = 10, CFG 4.5, one prompt per iteration, LoRA r = 32 (random
weights: the cost of a step does not depend on them). Runs that do not fit are recorded as "out of memory";
runs that would overrun --budget-s are skipped and listed. Then it refits the CUDA constants of
densegrpo_core/estimate_constants.json (written there unless --no-write-constants) and writes

    OUT/bench.json, OUT/bench.md      the raw figures (densegrpo.bench/2) and their table
    OUT/benchmarks_gpu.md             the "GPU (SD3.5-M, 512 px)" section for docs/benchmarks.md

`--tiny` runs the same plan on a tiny model in seconds (default device: cpu) to check the script itself; it
never writes constants.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from densegrpo_core.app.benchmark import BenchConfig, run_bench  # noqa: E402
from densegrpo_core.util.atomic import atomic_write_text  # noqa: E402

COMMAND = "python bench/gpu_sd35m.py"


def plan(args) -> BenchConfig:
    """The GPU plan (or its tiny twin): checkpointing on first, so a time budget cuts the slowest runs."""
    arch = "diffusers" if args.diffusers else "mmdit" if args.comfyui and not args.tiny else "dit"
    common = dict(
        out=args.out,
        arch=arch,
        steps=10,
        group_sizes=tuple(args.group_sizes),
        prompts=1,
        grad_checkpointing=(True, False),
        dtype="bfloat16",
        iterations=args.iterations,
        memory=True,
        compare_naive=False,
        budget_s=args.budget_s,
        fit_constants=not (args.tiny or args.no_write_constants),
    )
    if args.tiny:
        sizes = dict(width=32, depth=2, heads=2, latent_channels=4) if arch != "diffusers" else {}
        return BenchConfig(
            **{**common, "steps": 3, "group_sizes": (2, 3), "fit_constants": False},
            **sizes,
            latent_size=8,
            context_tokens=4,
            max_batch=8,
            train_batch=2,
            lora_rank=4,
            device=args.device or "cpu",
        )
    return BenchConfig(**common, max_batch=args.max_batch, train_batch=8, lora_rank=32, device=args.device or "cuda")


def section(result: dict, argv: list[str]) -> str:
    """The docs/benchmarks.md section for these figures."""
    with open(os.path.join(result["config"]["out"], "bench.md")) as f:
        table = f.read()
    c = result["constants"]
    return "\n".join(
        [
            "## GPU (SD3.5-M, 512 px)",
            "",
            f"Measured on {result['device']['name']} ({result['device']['total_bytes'] / 2**30:.0f} GiB) on "
            f"{time.strftime('%Y-%m-%d')} with `{' '.join([COMMAND, *argv])}` (torch {result['torch']}, "
            f"{result['wall_s']:.0f} s).",
            "",
            table,
            'Estimator constants refitted from these runs (densegrpo_core/estimate_constants.json, "cuda"):',
            "",
            "```",
            *(f"{k} = {v}" for k, v in c.items()),
            "```",
            "",
        ]
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "bench_out", "gpu_sd35m"), help="output folder")
    p.add_argument("--comfyui", default=None, help="a ComfyUI folder: use its MMDiT instead of the core DiT")
    p.add_argument(
        "--diffusers",
        default=None,
        help="a local diffusers SD3/SD3.5 pipeline folder: measure its transformer (real weights)",
    )
    p.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    p.add_argument(
        "--group-sizes", type=lambda t: [int(v) for v in t.split(",")], default=[8, 24], help="G values (default 8,24)"
    )
    p.add_argument("--iterations", type=int, default=1, help="timed iterations per run, after one warm-up")
    p.add_argument("--max-batch", type=int, default=64, help="rows per rollout forward call")
    p.add_argument("--budget-s", type=float, default=400.0, help="skip runs that would end later than this")
    p.add_argument("--no-write-constants", action="store_true", help="do not write the fitted constants")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run of this script on a tiny model")
    args = p.parse_args(argv)
    if args.diffusers:  # a diffusers folder's transformer (bench/diffusers_model.py: "diffusers")
        from diffusers_model import register as register_diffusers

        register_diffusers(args.diffusers)
    if args.comfyui:  # ComfyUI's own MMDiT (bench/comfy_mmdit.py registers it as "mmdit")
        from comfy_mmdit import register

        register(args.comfyui)
    if not args.tiny:
        import torch

        if not torch.cuda.is_available() and (args.device or "cuda").startswith("cuda"):
            print(
                "error: no CUDA device; this script measures a GPU (use --tiny to check it on a CPU)", file=sys.stderr
            )
            return 2
    result = run_bench(plan(args))
    path = os.path.join(args.out, "benchmarks_gpu.md")
    atomic_write_text(path, section(result, argv))
    print(
        f"wrote {args.out}/bench.json, bench.md and {path} (paste it into docs/benchmarks.md)"
        + (
            "; CUDA constants written into densegrpo_core/estimate_constants.json"
            if result["constants_written"]
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
