"""Tiny FLUX.1-dev (ComfyUI `Flux`): hidden 32 = 2 heads × 16 (axes 4 + 6 + 6), 1 double and 1 single block,
T5 context 4096, pooled 768, guidance embedding (tiny_families.py). The CLIP stand-in puts the guidance
value in the conditioning, as FluxGuidance does."""

CFG = 1.0
LATENT_NODE = "EmptySD3LatentImage"
GUIDANCE = 3.5


def build():
    import comfy.supported_models
    import torch

    from .tiny_families import TextCLIP, TinyFamily, model_from_config, text_generator, tiny_taesd_vae

    unet_config = {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": 768,
        "context_in_dim": 4096,
        "hidden_size": 32,
        "mlp_ratio": 4.0,
        "num_heads": 2,
        "depth": 1,
        "depth_single_blocks": 1,
        "axes_dim": [4, 6, 6],
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": True,
        "txt_ids_dims": [],
    }
    model = model_from_config(comfy.supported_models.Flux, unet_config, seed=41)

    def encode(text):
        g = text_generator(text, 0)
        cond, pooled = torch.randn((1, 8, 4096), generator=g), torch.randn((1, 768), generator=g)
        return cond, {"pooled_output": pooled, "guidance": GUIDANCE}

    latent = torch.zeros((1, 16, 8, 8))
    return TinyFamily(model=model, clip=TextCLIP(encode), vae=tiny_taesd_vae(16, seed=42), latent=latent, cfg=CFG)
