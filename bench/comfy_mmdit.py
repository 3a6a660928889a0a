"""ComfyUI's own MMDiT in the benchmark (arch "mmdit"): the core never imports ComfyUI, so it lives here.

    python bench/comfy_mmdit.py --comfyui ~/ComfyUI [any `python -m densegrpo_core bench` option]

`register()` adds the arch to densegrpo_core.app.benchmark (bench/gpu_sd35m.py uses it with --comfyui).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def import_comfy_mmdit(comfyui: str | None = None):
    """ComfyUI's MMDiT class and its `operations` without initialisation (ImportError if ComfyUI is absent)."""
    if comfyui:
        sys.path.insert(0, os.path.abspath(os.path.expanduser(comfyui)))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # before model_management probes for a GPU
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    return MMDiT, comfy.ops.disable_weight_init


class ComfyMMDiTVelocity(nn.Module):
    """ComfyUI's MMDiT as a VelocityModel: its output is the flow velocity, its timestep 1000·τ (SD3)."""

    def __init__(self, diffusion_model: nn.Module):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.diffusion_model(x, tau * 1000.0, y=cond["y"], context=cond["context"])


def comfy_mmdit(config, dit_cfg, dtype):
    """ComfyUI's MMDiT with SD3.5-Medium's configuration at `config.depth` (hidden 64·depth), random weights:
    (velocity model, LoRA module, the DiTConfig of its sizes)."""
    MMDiT, operations = import_comfy_mmdit()
    depth = config.depth or 24
    net = MMDiT(
        input_size=None,
        patch_size=dit_cfg.patch_size,
        in_channels=dit_cfg.latent_channels,
        depth=depth,
        adm_in_channels=dit_cfg.pooled_dim,
        out_channels=dit_cfg.latent_channels,
        context_embedder_config={
            "target": "torch.nn.Linear",
            "params": {"in_features": dit_cfg.context_dim, "out_features": 64 * depth},
        },
        num_patches=384 * 384,
        pos_embed_max_size=384,
        pos_embed_scaling_factor=None,
        qk_norm="rms",
        x_block_self_attn_layers=list(range(min(13, depth))),
        dtype=dtype,
        device=config.device,
        operations=operations,
    )
    with torch.no_grad():  # disable_weight_init leaves the tensors uninitialised
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith("bias"):
                t.zero_()
            elif "ln_q" in name or "ln_k" in name:
                t.fill_(1.0)
            else:
                t.normal_(0.0, 0.02)
    return ComfyMMDiTVelocity(net), net, dataclasses.replace(dit_cfg, width=64 * depth, depth=depth, heads=depth)


def register(comfyui: str | None = None) -> None:
    """Make arch "mmdit" available to densegrpo_core.app.benchmark (ImportError when ComfyUI cannot be imported)."""
    from densegrpo_core.app.benchmark import register_arch

    import_comfy_mmdit(comfyui)
    register_arch("mmdit", comfy_mmdit)


def main(argv=None) -> int:
    from densegrpo_core.app.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    comfyui = None
    if "--comfyui" in argv:
        i = argv.index("--comfyui")
        comfyui = argv[i + 1]
        del argv[i : i + 2]
    register(comfyui)
    if "--arch" not in argv:
        argv += ["--arch", "mmdit"]
    return cli_main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(main())
