"""Tiny Chroma (ComfyUI `Chroma`, comfy/ldm/chroma/model.py): hidden 32 = 2 heads × 16 (axes 4 + 6 + 6), 1 double
and 1 single block, approximator 2 layers × 32, patch 2 over 16 latent channels (in/out 64, as model_detection
sets them for Chroma), T5 context 4096 and no pooled vector: the CLIP stand-in puts `pooled_output: None` in the
conditioning, as ComfyUI's Chroma text encoder (pixart_t5) does, and true CFG with the negative prompt."""

CFG = 4.0
LATENT_NODE = "EmptySD3LatentImage"  # ComfyUI's Chroma template: 16-channel latents at 1/8 scale


def unet_config(depth: int = 1, depth_single_blocks: int = 1, hidden: int = 32, heads: int = 2) -> dict:
    """model_detection.detect_unet_config's keys for Chroma, at tiny widths."""
    return {
        "image_model": "chroma",
        "in_channels": 64,
        "out_channels": 64,
        "vec_in_dim": None,
        "context_in_dim": 4096,
        "hidden_size": hidden,
        "mlp_ratio": 4.0,
        "num_heads": heads,
        "depth": depth,
        "depth_single_blocks": depth_single_blocks,
        "axes_dim": [4, 6, 6],
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "txt_ids_dims": [],
        "in_dim": 64,
        "out_dim": hidden,
        "hidden_dim": 32,
        "n_layers": 2,
    }


def build():
    import comfy.supported_models
    import torch

    from .tiny_families import TextCLIP, TinyFamily, model_from_config, text_generator, tiny_taesd_vae

    model = model_from_config(comfy.supported_models.Chroma, unet_config(), seed=51)

    def encode(text):
        cond = torch.randn((1, 8, 4096), generator=text_generator(text, 0))
        return cond, {"pooled_output": None}

    latent = torch.zeros((1, 16, 8, 8))
    return TinyFamily(model=model, clip=TextCLIP(encode), vae=tiny_taesd_vae(16, seed=52), latent=latent, cfg=CFG)
