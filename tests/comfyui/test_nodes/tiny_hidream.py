"""Tiny HiDream (ComfyUI `HiDream`, comfy/ldm/hidream/model.py HiDreamImageTransformer2DModel): a flow model no
family record covers, trained with `auto` LoRA targets from ComfyUI's LoRA key map (nodes/comfy_training.py) and
its blocks under `_Trainable` (comfy_kitchen's rope kernel has no backward). 2 heads × 16, 1 double-stream + 1
single-stream block, each with a mixture of 2 experts (both active, so every expert gets a gradient) beside the
shared one; text: a T5 stream (c_crossattn), Llama-3.1 hidden states per block (`conditioning_llama3`, (1, 2, L, D))
and a pooled vector, all 32 wide here; 16 latent channels (FLUX's latent format), true CFG."""

CFG = 3.0
LATENT_NODE = "EmptySD3LatentImage"  # ComfyUI's HiDream template: 16-channel latents at 1/8 scale


def build():
    import comfy.supported_models
    import torch

    from .tiny_families import TextCLIP, TinyFamily, model_from_config, text_generator, tiny_taesd_vae

    unet_config = {
        "image_model": "hidream",
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "caption_channels": [32, 32],  # T5, Llama widths
        "text_emb_dim": 32,  # pooled vector
        "num_routed_experts": 2,
        "num_activated_experts": 2,
        "axes_dims_rope": (8, 4, 4),
        "max_resolution": (16, 16),  # patch grid 8 × 8: up to 128 px
        "llama_layers": [0, 1],  # the Llama hidden state each block reads
    }
    model = model_from_config(comfy.supported_models.HiDream, unet_config, seed=91)

    def encode(text):
        g = text_generator(text, 0)
        t5, pooled = torch.randn((1, 8, 32), generator=g), torch.randn((1, 32), generator=g)
        llama = torch.randn((1, 2, 8, 32), generator=g)
        return t5, {"pooled_output": pooled, "conditioning_llama3": llama}

    latent = torch.zeros((1, 16, 8, 8))
    return TinyFamily(model=model, clip=TextCLIP(encode), vae=tiny_taesd_vae(16, seed=92), latent=latent, cfg=CFG)
