"""Chroma1-HD: ComfyUI's Chroma (comfy/ldm/chroma/model.py) as model_detection configures it (FLUX.1's 19 double
and 38 single blocks at hidden 3072 = 24 heads × 128, without their modulation layers; the approximator 64 → 5120
× 5 layers → 3072; in/out 64 = 16 latent channels × 2 × 2 patches)."""

CONTEXT_TOKENS = 128  # ComfyUI's Chroma T5 (pixart_t5) pads nothing: a prompt's own tokens, a detailed prompt's
LATENT_CHANNELS = 16
LATENT_DOWNSCALE = 8
USES_CFG = True  # true CFG with a negative prompt

REAL_SIZES = {
    "Chroma1-HD": {
        "in_channels": 64,
        "out_channels": 64,
        "vec_in_dim": None,
        "context_in_dim": 4096,
        "hidden_size": 3072,
        "mlp_ratio": 4.0,
        "num_heads": 24,
        "depth": 19,
        "depth_single_blocks": 38,
        "axes_dim": [16, 56, 56],
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "txt_ids_dims": [],
        "in_dim": 64,
        "out_dim": 3072,
        "hidden_dim": 5120,
        "n_layers": 5,
    }
}


def build(unet_config, dtype, device, operations):
    from comfy.ldm.chroma.model import Chroma

    return Chroma(**unet_config, dtype=dtype, device=device, operations=operations)
