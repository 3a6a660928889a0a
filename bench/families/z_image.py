"""Z-Image and Lumina 2: ComfyUI's NextDiT (comfy/ldm/lumina/model.py, model_base.Lumina2) as
comfy/model_detection.py configures it from the checkpoint's keys: Z-Image (dim 3840 = 30 heads × 128, 30
layers, Qwen3-4B context 2560, pad tokens to multiples of 32) and Lumina Image 2.0 (dim 2304 = 24 heads × 96,
8 kv heads, 26 layers, Gemma2-2B context 2304); both have 2 noise and 2 context refiner blocks."""

CONTEXT_TOKENS = 128  # a typical prompt in the chat / system-prompt template; captions are not padded
LATENT_CHANNELS = 16  # FLUX.1's VAE
LATENT_DOWNSCALE = 8
USES_CFG = True  # Lumina 2 and the Z-Image base model (ZImagePipeline's default guidance_scale 5); Turbo: cfg 1

REAL_SIZES = {
    "Z-Image": {
        "image_model": "lumina2",
        "patch_size": 2,
        "in_channels": 16,
        "dim": 3840,
        "cap_feat_dim": 2560,
        "n_layers": 30,
        "qk_norm": True,
        "n_heads": 30,
        "n_kv_heads": 30,
        "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512],
        "rope_theta": 256.0,
        "ffn_dim_multiplier": 8.0 / 3.0,
        "z_image_modulation": True,
        "time_scale": 1000.0,
        "pad_tokens_multiple": 32,
    },
    "Lumina-Image-2.0": {
        "image_model": "lumina2",
        "patch_size": 2,
        "in_channels": 16,
        "dim": 2304,
        "cap_feat_dim": 2304,
        "n_layers": 26,
        "qk_norm": True,
        "n_heads": 24,
        "n_kv_heads": 8,
        "axes_dims": [32, 32, 32],
        "axes_lens": [300, 512, 512],
        "rope_theta": 10000.0,
        "ffn_dim_multiplier": 4.0,
    },
}


def build(unet_config, dtype, device, operations):
    from comfy.ldm.lumina.model import NextDiT

    return NextDiT(**unet_config, dtype=dtype, device=device, operations=operations)
