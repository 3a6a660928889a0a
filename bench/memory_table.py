"""Predicted peak memory of DenseGRPO LoRA training at real sizes (docs/benchmarks.md, "Real sizes").

    python bench/memory_table.py --comfyui ~/ComfyUI [--train-batch 4 --max-batch 16 --markdown]

Builds every real size of every family in bench/families (SD3.5-Medium/Large, FLUX.1-dev, ...) with ComfyUI's
own classes on the `meta` device (nothing is allocated: the parameters are counted, not loaded) and asks the estimator
(densegrpo_core.resources.estimate,
the "cuda" constants) for the peak at 512 and 1024 px, T = 10, one prompt × G = 8, DenseGRPO, LoRA r = 32, with bf16
and fp8 base weights (computed in bf16), with and without gradient checkpointing. SD3.5 trains with CFG
4.5 (the unconditional pass detached), FLUX.1-dev (guidance-distilled) without CFG.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)  # bench/families

GiB = 2**30


def import_comfy(comfyui: str | None):
    if comfyui:
        sys.path.insert(0, os.path.abspath(os.path.expanduser(comfyui)))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.ops

    return comfy.ops.disable_weight_init


def sd35(depth: int, ops, x_self_attn: int, pos_max: int):
    """ComfyUI's MMDiT at SD3.5's configuration of this depth (hidden 64·depth), on meta, bf16."""
    from families import sd3

    config = {**sd3.REAL_SIZES["SD3.5-M"], **sd3._mmdit(depth, x_self_attn, pos_max)}
    return sd3.build(config, torch.bfloat16, "meta", ops)


def flux_dev(ops, double: int = 19, single: int = 38):
    """ComfyUI's Flux at FLUX.1-dev's configuration (19 double, 38 single blocks, hidden 3072), on meta, bf16."""
    from families import flux

    config = {**flux.REAL_SIZES["FLUX.1-dev"], "depth": double, "depth_single_blocks": single}
    return flux.build(config, torch.bfloat16, "meta", ops)


def models() -> dict:
    """model name → (family module, unet_config) for every real size of every family in bench/families."""
    from families import family_modules

    return {
        name: (module, config) for module in family_modules().values() for name, config in module.REAL_SIZES.items()
    }


def rows(args):
    from densegrpo_core.resources.estimate import DeviceInfo, estimate, model_info, with_base_dtype
    from densegrpo_core.training.trainer import TrainConfig

    ops = import_comfy(args.comfyui)
    device = DeviceInfo("cuda", "predicted", int(args.device_gb * GiB), int(args.device_gb * GiB))
    out = []
    for name, (family, unet_config) in models().items():
        if args.models and name not in args.models:
            continue
        net = family.build(unet_config, torch.bfloat16, "meta", ops)
        for size in args.sizes:
            side = size // family.LATENT_DOWNSCALE
            latent = (family.LATENT_CHANNELS, side, side)
            info = model_info(net, latent, context_tokens=family.CONTEXT_TOKENS, compute_dtype=torch.bfloat16)
            for dtype in ("bfloat16", "float8_e4m3fn"):
                for ckpt in (False, True):
                    config = TrainConfig(
                        steps=10,
                        group_size=args.group,
                        prompts_per_iteration=1,
                        advantage_mode="dense_grpo",
                        cfg_scale=4.5 if family.USES_CFG else 1.0,
                        max_batch=args.max_batch,
                        train_batch=args.train_batch,
                        grad_accum=max(1, args.group // args.train_batch),
                        lora_rank=32,
                        grad_checkpointing=ckpt,
                        dtype="bfloat16",
                    )
                    e = estimate(config, with_base_dtype(info, dtype), device)
                    fits_with = ""
                    if dtype != "bfloat16" and ckpt and e.peak_bytes > 0.9 * args.device_gb * 1e9:
                        fits_with = smaller_batches(config, with_base_dtype(info, dtype), device, args.device_gb)
                    out.append(
                        {
                            "model": name,
                            "size": size,
                            "params": info.params,
                            "base": dtype,
                            "checkpointing": ckpt,
                            "cfg": family.USES_CFG,
                            "peak_gib": e.peak_bytes / GiB,
                            "weights_gib": e.breakdown["weights_bytes"] / GiB,
                            "stage": e.breakdown["largest_stage"],
                            "stage_gib": e.breakdown[e.breakdown["largest_stage"] + "_bytes"] / GiB,
                            "s_per_it": e.seconds_per_iteration,
                            "fits_with": fits_with,
                        }
                    )
        del net
    return out


def smaller_batches(config, info, device, device_gb: float) -> str:
    """The largest train_batch (× grad_accum, the same optimizer step) and max_batch under which the run fits in
    90 % of `device_gb`, as text for the table ("; fits with ..."), or "" when none does."""
    import dataclasses

    from densegrpo_core.resources.estimate import estimate

    group = config.group_size
    for train_batch in (2, 1):
        for max_batch in (8, 4, 2):
            smaller = dataclasses.replace(
                config, train_batch=train_batch, grad_accum=max(1, group // train_batch), max_batch=max_batch
            )
            peak = estimate(smaller, info, device).peak_bytes
            if peak <= 0.9 * device_gb * 1e9:
                return f"; yes with train_batch {train_batch}, max_batch {max_batch} ({peak / GiB:.1f} GiB)"
    return ""


def markdown(table: list[dict], device_gb: float) -> str:
    lines = [
        "| model | px | CFG | parameters | base weights | checkpointing | weights GiB | largest stage |"
        f" predicted peak GiB | fits {device_gb:.0f} GB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        base = "fp8 (e4m3fn)" if r["base"].startswith("float8") else "bf16"
        fits = "yes" if r["peak_gib"] * GiB <= 0.9 * device_gb * 1e9 else "no"
        lines.append(
            f"| {r['model']} | {r['size']} | {'yes' if r['cfg'] else 'no'} | {r['params'] / 1e9:.2f} B | {base} | "
            f"{'on' if r['checkpointing'] else 'off'} | {r['weights_gib']:.1f} | {r['stage']} {r['stage_gib']:.1f} | "
            f"**{r['peak_gib']:.1f}** | {fits}{r.get('fits_with', '')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (or $COMFYUI_PATH)")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sizes in pixels")
    p.add_argument("--models", nargs="*", default=None, help="only these model names (default: every real size)")
    p.add_argument("--group", type=int, default=8, help="G")
    p.add_argument("--train-batch", type=int, default=4, help="trajectories per minibatch (grad_accum = G / this)")
    p.add_argument("--max-batch", type=int, default=16, help="rows per rollout forward call")
    p.add_argument("--device-gb", type=float, default=24.0, help="device memory for the 'fits' column")
    args = p.parse_args(argv)
    print(markdown(rows(args), args.device_gb))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
