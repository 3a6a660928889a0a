"""Tiny AuraFlow (ComfyUI `AuraFlow`, comfy/ldm/aura/mmdit.py MMDiT): a flow model no family record covers, so the
Train node chooses its LoRA targets from ComfyUI's LoRA key map (`auto`, nodes/comfy_training.py). Width 32 = 2
heads × 16, 1 double + 1 single layer, T5 (pile-t5) context 2048 and no pooled vector, 4 latent channels (SDXL's
latent format), true CFG, ModelSamplingDiscreteFlow (shift 1.73)."""

CFG = 3.5
LATENT_NODE = "EmptyLatentImage"  # ComfyUI's AuraFlow template: 4-channel latents at 1/8 scale


def build():
    import comfy.supported_models
    import torch

    from .tiny_families import TextCLIP, TinyFamily, model_from_config, text_generator, tiny_taesd_vae

    unet_config = {  # model_detection's keys for AuraFlow (max_seq, cond_seq_dim, layer counts), tiny widths
        "max_seq": 64,  # an 8 × 8 grid of patches: up to 128 px
        "cond_seq_dim": 2048,
        "n_double_layers": 1,
        "n_layers": 2,
        "dim": 32,
        "n_heads": 2,
        "global_conddim": 32,
        "in_channels": 4,
        "out_channels": 4,
        "patch_size": 2,
    }
    model = model_from_config(comfy.supported_models.AuraFlow, unet_config, seed=61)

    def encode(text):
        return torch.randn((1, 8, 2048), generator=text_generator(text, 0)), {}

    latent = torch.zeros((1, 4, 8, 8))
    return TinyFamily(model=model, clip=TextCLIP(encode), vae=tiny_taesd_vae(4, seed=62), latent=latent, cfg=CFG)
