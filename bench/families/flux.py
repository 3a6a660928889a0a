"""FLUX.1-dev: ComfyUI's Flux (comfy/ldm/flux/model.py) as model_detection configures it (19 double and 38
single blocks, hidden 3072 = 24 heads × 128, guidance embedding)."""

CONTEXT_TOKENS = 256  # ComfyUI's T5 minimum length
LATENT_CHANNELS = 16
LATENT_DOWNSCALE = 8
USES_CFG = False  # guidance-distilled: the guidance embedding instead of CFG

REAL_SIZES = {
    "FLUX.1-dev": {
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": 768,
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
        "guidance_embed": True,
        "txt_ids_dims": [],
    }
}


def build(unet_config, dtype, device, operations):
    from comfy.ldm.flux.model import Flux

    return Flux(**unet_config, dtype=dtype, device=device, operations=operations)
