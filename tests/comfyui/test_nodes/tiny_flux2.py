"""Tiny FLUX.2-dev (ComfyUI `Flux2`: comfy.ldm.flux's Flux with the FLUX.2 config comfy/model_detection.py sets —
global modulation, SiLU-gated MLPs, no biases, 4 rope axes, text ids on axis 3): hidden 32 = 2 heads × 16 (axes
4 × 4), 1 double and 1 single block, 128 latent channels at 16 px per latent pixel, Mistral context 15360,
guidance embedding (tiny_families.py). ComfyUI's Flux2 pads the context to 512 tokens; the CLIP stand-in gives 8
and puts the guidance value in the conditioning, as FluxGuidance does, and `pooled_output: None` (FLUX.2 has no
pooled vector, but Flux.encode_adm reads the key)."""

CFG = 1.0
LATENT_NODE = "EmptyFlux2LatentImage"
GUIDANCE = 4.0
CONTEXT_DIM = 15360

UNET_CONFIG = {
    "image_model": "flux2",
    "in_channels": 128,
    "out_channels": 128,
    "vec_in_dim": None,
    "context_in_dim": CONTEXT_DIM,
    "hidden_size": 32,
    "mlp_ratio": 3.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [4, 4, 4, 4],
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


def build():
    import comfy.supported_models
    import torch

    from .tiny_families import TextCLIP, TinyFamily, model_from_config, text_generator, tiny_taesd_vae

    model = model_from_config(comfy.supported_models.Flux2, dict(UNET_CONFIG), seed=51)

    def encode(text):
        cond = torch.randn((1, 8, CONTEXT_DIM), generator=text_generator(text, 0))
        return cond, {"pooled_output": None, "guidance": GUIDANCE}

    latent = torch.zeros((1, 128, 4, 4))  # EmptyFlux2LatentImage at 64 px
    return TinyFamily(model=model, clip=TextCLIP(encode), vae=tiny_taesd_vae(128, seed=52), latent=latent, cfg=CFG)
