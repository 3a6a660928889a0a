"""Tiny Z-Image (ComfyUI `Lumina2` class over NextDiT, built from `comfy.supported_models.ZImage`): 256 wide =
4 heads × 64 (RoPE axes 16 + 24 + 24; ComfyUI's Z-Image modulation needs at least 256), 1 main layer and 1 noise
/ 1 context refiner, Qwen3 context 2560 (tiny_families.py). The CLIP stand-in gives captions whose length
grows with the text, as ComfyUI's Z-Image text encoder does (no padding), so the prompts and the empty negative
have different `num_tokens` and the Train node must batch them as ComfyUI does.

`comfy_model_from_diffusers(sd)` is the builder tests/comfyui/test_diffusers_lora_z_image_in_comfyui.py hands
comfy_lora_worker.py: ComfyUI's class for a diffusers ZImageTransformer2DModel state dict, converted with
ComfyUI's own key map (`comfy.utils.z_image_to_diffusers`, which comfy/lora.py also uses for LoRA names).
"""

CFG = 2.0  # true CFG: the negative prompt's pass runs too
LATENT_NODE = "EmptySD3LatentImage"  # ComfyUI's Z-Image template
CONTEXT_DIM = 2560  # Qwen3-4B hidden size
AXES = [32, 48, 48]  # the diffusers tiny's (tests/diffusers_tiny_z_image.py, comfy_compatible)


def z_image_unet_config(dim: int, n_heads: int, axes, cap_feat_dim: int, n_layers: int, n_refiner_layers: int) -> dict:
    """What comfy/model_detection.py detects for Z-Image (dim 3840), at other widths; multiple_of 1 keeps the
    feed-forward width int(8/3·dim), as diffusers computes it."""
    return {
        "image_model": "lumina2",
        "patch_size": 2,
        "in_channels": 16,
        "dim": dim,
        "cap_feat_dim": cap_feat_dim,
        "n_layers": n_layers,
        "n_refiner_layers": n_refiner_layers,
        "qk_norm": True,
        "n_heads": n_heads,
        "n_kv_heads": n_heads,
        "axes_dims": list(axes),
        "axes_lens": [1536, 512, 512],
        "rope_theta": 256.0,
        "ffn_dim_multiplier": 8.0 / 3.0,
        "multiple_of": 1,
        "z_image_modulation": True,
        "time_scale": 1000.0,
        "pad_tokens_multiple": 32,
    }


def build():
    import comfy.supported_models
    import torch

    from .tiny_families import TextCLIP, TinyFamily, model_from_config, text_generator, tiny_taesd_vae

    unet_config = z_image_unet_config(256, 4, [16, 24, 24], CONTEXT_DIM, n_layers=1, n_refiner_layers=1)
    model = model_from_config(comfy.supported_models.ZImage, unet_config, seed=51)

    def encode(text):
        tokens = 6 + min(len(text), 58)  # the chat template's tokens, then roughly one per character
        return torch.randn((1, tokens, CONTEXT_DIM), generator=text_generator(text, 0)), {}

    latent = torch.zeros((1, 16, 8, 8))
    return TinyFamily(model=model, clip=TextCLIP(encode), vae=tiny_taesd_vae(16, seed=52), latent=latent, cfg=CFG)


def comfy_model_from_diffusers(sd: dict):
    """A ModelPatcher over ComfyUI's Lumina2/NextDiT holding a diffusers ZImageTransformer2DModel's weights:
    each diffusers key goes where `comfy.utils.z_image_to_diffusers` maps it (to_q/to_k/to_v into slices of the
    fused qkv). Every diffusers key must map and every ComfyUI weight be filled."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils
    import torch

    dim, cap_feat_dim = sd["cap_embedder.1.weight"].shape
    head_dim = sd["layers.0.attention.norm_q.weight"].shape[0]

    def count(prefix):
        return len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})

    unet_config = z_image_unet_config(
        dim, dim // head_dim, AXES, cap_feat_dim, n_layers=count("layers"), n_refiner_layers=count("noise_refiner")
    )
    config = comfy.supported_models.ZImage(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "")
    key_map = comfy.utils.z_image_to_diffusers(unet_config)
    own = model.diffusion_model.state_dict()
    converted, filled = {}, {}
    for key, tensor in sd.items():
        if key not in key_map:
            raise KeyError(f"diffusers key {key!r} has no place in ComfyUI's NextDiT (z_image_to_diffusers)")
        target = key_map[key]
        if isinstance(target, str):
            converted[target] = tensor
            filled[target] = own[target].shape[0]
        else:
            name, (axis, start, size) = target
            converted.setdefault(name, torch.zeros_like(own[name])).narrow(axis, start, size).copy_(tensor)
            filled[name] = filled.get(name, 0) + size
    missing = [k for k in own if filled.get(k) != own[k].shape[0]]
    if missing:
        raise KeyError(f"ComfyUI weights not (fully) filled from the diffusers state dict: {missing}")
    model.diffusion_model.load_state_dict(converted, strict=True)
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
