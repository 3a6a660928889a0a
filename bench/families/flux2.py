"""FLUX.2-dev: ComfyUI's Flux2 (comfy/ldm/flux/model.py's Flux with the FLUX.2 config) as comfy/model_detection.py
configures it (8 double and 48 single blocks, hidden 6144 = 48 heads × 128, rope axes 4 × 32, Mistral context
15360, 128 latent channels, guidance embedding). ComfyUI 0.8.0 detects only these widths (48 heads hard-coded),
so FLUX.2 klein has no real size here."""

CONTEXT_TOKENS = 512  # comfy.model_base.Flux2.extra_conds pads the text to 512 tokens
LATENT_CHANNELS = 128  # the VAE's 32 channels, patchified 2×2
LATENT_DOWNSCALE = 16
USES_CFG = False  # guidance-distilled: the guidance embedding instead of CFG

REAL_SIZES = {
    "FLUX.2-dev": {
        "image_model": "flux2",
        "in_channels": 128,
        "out_channels": 128,
        "vec_in_dim": None,
        "context_in_dim": 15360,
        "hidden_size": 6144,
        "mlp_ratio": 3.0,
        "num_heads": 48,
        "depth": 8,
        "depth_single_blocks": 48,
        "axes_dim": [32, 32, 32, 32],
        "theta": 2000,
        "patch_size": 1,
        "qkv_bias": False,
        "guidance_embed": True,
        "txt_ids_dims": [3],
        "global_modulation": True,
        "mlp_silu_act": True,
        "ops_bias": False,
        "default_ref_method": "index",
        "ref_index_scale": 10.0,
    }
}


def build(unet_config, dtype, device, operations):
    from comfy.ldm.flux.model import Flux

    return Flux(**unet_config, dtype=dtype, device=device, operations=operations)
