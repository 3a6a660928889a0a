"""Predicted peak memory of DenseGRPO LoRA training at real sizes (docs/benchmarks.md, "Real sizes").

    python bench/memory_table.py --comfyui ~/ComfyUI [--train-batch 4 --max-batch 16 --markdown]

Builds SD3.5-Medium, SD3.5-Large and FLUX.1-dev with ComfyUI's own classes (MMDiT, Flux) on the `meta` device
(nothing is allocated: the parameters are counted, not loaded) and asks the estimator
(densegrpo_core.resources.estimate,
the "cuda" constants) for the peak at 512 px, T = 10, one prompt × G = 8, DenseGRPO, LoRA r = 32, with bf16
and fp8 base weights (computed in bf16), with and without gradient checkpointing. SD3.5 trains with CFG
4.5 (the unconditional pass detached), FLUX.1-dev (guidance-distilled) without CFG.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    return MMDiT(
        input_size=None,
        patch_size=2,
        in_channels=16,
        depth=depth,
        adm_in_channels=2048,
        out_channels=16,
        context_embedder_config={
            "target": "torch.nn.Linear",
            "params": {"in_features": 4096, "out_features": 64 * depth},
        },
        num_patches=pos_max * pos_max,
        pos_embed_max_size=pos_max,
        pos_embed_scaling_factor=None,
        qk_norm="rms",
        x_block_self_attn_layers=list(range(x_self_attn)),
        dtype=torch.bfloat16,
        device="meta",
        operations=ops,
    )


def flux_dev(ops, double: int = 19, single: int = 38):
    """ComfyUI's Flux at FLUX.1-dev's configuration (19 double, 38 single blocks, hidden 3072), on meta, bf16."""
    from comfy.ldm.flux.model import Flux

    return Flux(
        in_channels=16,
        out_channels=16,
        vec_in_dim=768,
        context_in_dim=4096,
        hidden_size=3072,
        mlp_ratio=4.0,
        num_heads=24,
        depth=double,
        depth_single_blocks=single,
        axes_dim=[16, 56, 56],
        theta=10000,
        patch_size=2,
        qkv_bias=True,
        guidance_embed=True,
        txt_ids_dims=[],
        dtype=torch.bfloat16,
        device="meta",
        operations=ops,
    )


MODELS = {  # name: (builder, text tokens in the joint attention (ComfyUI's T5 minimum lengths), CFG scale)
    "SD3.5-M": (lambda ops: sd35(24, ops, 13, 384), 154, 4.5),
    "SD3.5-L": (lambda ops: sd35(38, ops, 0, 192), 154, 4.5),
    "FLUX.1-dev": (flux_dev, 256, 1.0),
}


def rows(args):
    from densegrpo_core.resources.estimate import DeviceInfo, estimate, model_info, with_base_dtype
    from densegrpo_core.training.trainer import TrainConfig

    ops = import_comfy(args.comfyui)
    device = DeviceInfo("cuda", "predicted", int(args.device_gb * GiB), int(args.device_gb * GiB))
    latent = (16, args.size // 8, args.size // 8)
    out = []
    for name, (build, ctx, cfg) in MODELS.items():
        info = model_info(build(ops), latent, context_tokens=ctx, compute_dtype=torch.bfloat16)
        for dtype in ("bfloat16", "float8_e4m3fn"):
            for ckpt in (False, True):
                config = TrainConfig(
                    steps=10,
                    group_size=args.group,
                    prompts_per_iteration=1,
                    advantage_mode="dense_grpo",
                    cfg_scale=cfg,
                    max_batch=args.max_batch,
                    train_batch=args.train_batch,
                    grad_accum=max(1, args.group // args.train_batch),
                    lora_rank=32,
                    grad_checkpointing=ckpt,
                    dtype="bfloat16",
                )
                e = estimate(config, with_base_dtype(info, dtype), device)
                out.append(
                    {
                        "model": name,
                        "params": info.params,
                        "base": dtype,
                        "checkpointing": ckpt,
                        "peak_gib": e.peak_bytes / GiB,
                        "weights_gib": e.breakdown["weights_bytes"] / GiB,
                        "stage": e.breakdown["largest_stage"],
                        "stage_gib": e.breakdown[e.breakdown["largest_stage"] + "_bytes"] / GiB,
                        "s_per_it": e.seconds_per_iteration,
                    }
                )
    return out


def markdown(table: list[dict], device_gb: float) -> str:
    lines = [
        "| model | parameters | base weights | checkpointing | weights GiB | largest stage | predicted peak GiB |"
        f" fits {device_gb:.0f} GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        base = "fp8 (e4m3fn)" if r["base"].startswith("float8") else "bf16"
        fits = "yes" if r["peak_gib"] * GiB <= 0.9 * device_gb * 1e9 else "no"
        lines.append(
            f"| {r['model']} | {r['params'] / 1e9:.2f} B | {base} | {'on' if r['checkpointing'] else 'off'} | "
            f"{r['weights_gib']:.1f} | {r['stage']} {r['stage_gib']:.1f} | **{r['peak_gib']:.1f}** | {fits} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (or $COMFYUI_PATH)")
    p.add_argument("--size", type=int, default=512, help="image size in pixels")
    p.add_argument("--group", type=int, default=8, help="G")
    p.add_argument("--train-batch", type=int, default=4, help="trajectories per minibatch (grad_accum = G / this)")
    p.add_argument("--max-batch", type=int, default=16, help="rows per rollout forward call")
    p.add_argument("--device-gb", type=float, default=24.0, help="device memory for the 'fits' column")
    args = p.parse_args(argv)
    print(markdown(rows(args), args.device_gb))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
