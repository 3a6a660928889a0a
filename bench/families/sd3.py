"""SD3.5 Medium / Large: ComfyUI's MMDiT (comfy/ldm/modules/diffusionmodules/mmdit.py) as model_detection
configures the released checkpoints (hidden 64 · depth; SD3.5-M: 13 MMDiT-X self-attention blocks, position
table 384; SD3.5-L: 192)."""

CONTEXT_TOKENS = 154  # CLIP-L/G 77 + T5 77 (ComfyUI's minimum T5 length)
LATENT_CHANNELS = 16
LATENT_DOWNSCALE = 8
USES_CFG = True


def _mmdit(depth: int, x_self_attn: int, pos_max: int) -> dict:
    return {
        "input_size": None,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "depth": depth,
        "adm_in_channels": 2048,
        "context_embedder_config": {
            "target": "torch.nn.Linear",
            "params": {"in_features": 4096, "out_features": 64 * depth},
        },
        "num_patches": pos_max * pos_max,
        "pos_embed_max_size": pos_max,
        "pos_embed_scaling_factor": None,
        "qk_norm": "rms",
        "x_block_self_attn_layers": list(range(x_self_attn)),
    }


REAL_SIZES = {"SD3.5-M": _mmdit(24, 13, 384), "SD3.5-L": _mmdit(38, 0, 192)}


def build(unet_config, dtype, device, operations):
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    return MMDiT(**unet_config, dtype=dtype, device=device, operations=operations)
