"""Builder for comfy_lora_worker.py (runs under ComfyUI's python): a diffusers FluxTransformer2DModel state dict
as ComfyUI's own `Flux` model, converted the way UNETLoader's diffusers path converts it.

comfy.sd.load_diffusion_model_state_dict would convert the keys (`convert_diffusers_mmdit`) but then detect FLUX.1
with its hard-coded real widths (24 heads, rope axes 16/56/56); so: ComfyUI's own converter, and ComfyUI's class
built from `supported_models.Flux` with the widths of the file.
"""

import torch


def unet_config(sd: dict) -> dict:
    hidden, packed = sd["x_embedder.weight"].shape
    head = sd["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    count = lambda prefix: len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})  # noqa: E731
    return {
        "image_model": "flux",
        "in_channels": packed // 4,  # diffusers packs 2×2 latent patches outside the model; ComfyUI inside it
        "out_channels": sd["proj_out.weight"].shape[0] // 4,
        "vec_in_dim": sd["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        "context_in_dim": sd["context_embedder.weight"].shape[1],
        "hidden_size": hidden,
        "mlp_ratio": 4.0,
        "num_heads": hidden // head,
        "depth": count("transformer_blocks"),
        "depth_single_blocks": count("single_transformer_blocks"),
        "axes_dim": [4, 6, 6],  # tests/diffusers_tiny.py's axes_dims_rope
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": any(k.startswith("time_text_embed.guidance_embedder.") for k in sd),
        "txt_ids_dims": [],
    }


def build(sd: dict):
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.Flux(unet_config(sd))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "")
    converted = comfy.model_detection.convert_diffusers_mmdit(sd, "")
    missing, unexpected = model.diffusion_model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"diffusers FLUX.1 → ComfyUI Flux: missing {missing}, unexpected {unexpected}")
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
