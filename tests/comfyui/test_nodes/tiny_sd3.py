"""Tiny SD3.5 (ComfyUI `SD3`, MMDiT with an SD3.5 self-attention block and qk RMS norm): hidden 64, 1 head,
depth 1, context 4096 → 64, pooled 2048 (tiny_families.py)."""

CFG = 2.0
LATENT_NODE = "EmptySD3LatentImage"


def build():
    import comfy.supported_models
    import torch

    from .tiny_families import TextCLIP, TinyFamily, model_from_config, text_generator, tiny_taesd_vae

    unet_config = {
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": 2,
        "depth": 1,
        "num_patches": 32 * 32,
        "pos_embed_max_size": 32,
        "pos_embed_scaling_factor": None,
        "adm_in_channels": 2048,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64}},
        "qk_norm": "rms",
        "x_block_self_attn_layers": [0],
    }
    model = model_from_config(comfy.supported_models.SD3, unet_config, seed=31)

    def encode(text):
        g = text_generator(text, 0)
        return torch.randn((1, 8, 4096), generator=g), {"pooled_output": torch.randn((1, 2048), generator=g)}

    latent = torch.zeros((1, 16, 8, 8))
    return TinyFamily(model=model, clip=TextCLIP(encode), vae=tiny_taesd_vae(16, seed=32), latent=latent, cfg=CFG)
