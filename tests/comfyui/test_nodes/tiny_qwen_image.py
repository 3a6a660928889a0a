"""Tiny Qwen-Image (ComfyUI `QwenImage`, comfy/ldm/qwen_image/model.py): inner width 32 = 2 heads × 16 (rope axes
4 + 6 + 6), 2 blocks, Qwen2.5-VL context 3584 (tiny_families.py). Its latent format is Wan 2.1's (16 channels,
latent_dimensions 3): the empty latent EmptySD3LatentImage makes (as ComfyUI's Qwen-Image template) becomes
(B, 16, 1, h, w) in the sampler. The CLIP stand-in gives prompt-length-dependent token counts, as ComfyUI's Qwen
text encoder (which drops the chat template's padding) does.

`comfy_from_diffusers(state_dict)` is the LoRA worker's builder (comfy_lora_worker.py): ComfyUI's class built at the
widths of a tiny diffusers QwenImageTransformer2DModel state dict, weights loaded as UNETLoader loads a Qwen-Image
file (same module names, `load_model_weights(sd, "")`). It imports nothing relative: the worker loads it by path.
"""

CFG = 2.5
LATENT_NODE = "EmptySD3LatentImage"
CONTEXT_DIM = 3584  # Qwen2.5-VL 7B hidden size: ComfyUI's QwenImage joint_attention_dim

UNET_CONFIG = {
    "image_model": "qwen_image",
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": CONTEXT_DIM,
    "axes_dims_rope": [4, 6, 6],
}


def build():
    import comfy.supported_models
    import torch

    from .tiny_families import TextCLIP, TinyFamily, model_from_config, text_generator, tiny_taesd_vae

    model = model_from_config(comfy.supported_models.QwenImage, UNET_CONFIG, seed=51)

    def encode(text):
        g = text_generator(text, 0)
        tokens = 6 + len(text) % 3  # ComfyUI's Qwen conditioning has as many tokens as the prompt
        return torch.randn((1, tokens, CONTEXT_DIM), generator=g), {}

    latent = torch.zeros((1, 16, 8, 8))  # EmptySD3LatentImage at 64 px
    return TinyFamily(model=model, clip=TextCLIP(encode), vae=tiny_taesd_vae(16, seed=52), latent=latent, cfg=CFG)


def comfy_from_diffusers(sd: dict):
    """ComfyUI's QwenImage at the widths of a diffusers QwenImageTransformer2DModel state dict (ComfyUI's detection
    reads in_channels and the depth and hard-codes the rest), with its weights: a ModelPatcher."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    unet_config = comfy.model_detection.detect_unet_config(sd, "")  # image_model, in_channels, num_layers
    if unet_config.get("image_model") != "qwen_image":
        raise ValueError(f"not a Qwen-Image transformer state dict: ComfyUI detects {unet_config}")
    head_dim = sd["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    inner = sd["img_in.weight"].shape[0]
    patch = 2
    unet_config.update(
        patch_size=patch,
        out_channels=sd["proj_out.weight"].shape[0] // patch**2,
        attention_head_dim=head_dim,
        num_attention_heads=inner // head_dim,
        joint_attention_dim=sd["txt_in.weight"].shape[1],
        axes_dims_rope=[4, 6, 6] if head_dim == 16 else [16, 56, 56],
    )
    config = comfy.supported_models.QwenImage(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "")
    own = set(model.diffusion_model.state_dict())
    if set(sd) != own:
        raise ValueError(f"ComfyUI's QwenImage keys differ: missing {own - set(sd)}, unexpected {set(sd) - own}")
    model.load_model_weights(dict(sd), "")  # as comfy.sd.load_diffusion_model_state_dict
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
