"""Builder for comfy_lora_worker.py (runs under ComfyUI's python): a diffusers ChromaTransformer2DModel state dict
as ComfyUI's own `Chroma` model, loaded the way UNETLoader's diffusers path converts it.

comfy.sd.load_diffusion_model_state_dict cannot take a diffusers Chroma file as it is: model_detection would build
full widths (3072 hidden, 5120 approximator), and `convert_diffusers_mmdit` (the FLUX branch it takes on
`x_embedder.weight`) maps only FLUX's keys — the double/single blocks with q/k/v fused, the embedders and the
output projection — not the approximator. So: ComfyUI's converter for what it maps, the approximator renamed
(diffusers ChromaApproximator: layers.N.linear_1/2, norms.N.weight → ComfyUI Approximator: layers.N.in_layer /
out_layer, norms.N.scale), and ComfyUI's class built from `supported_models.Chroma` with the widths of the file.
"""

import re

import torch


def unet_config(sd: dict) -> dict:
    hidden = sd["x_embedder.weight"].shape[0]
    head = sd["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    count = lambda prefix: len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})  # noqa: E731
    return {
        "image_model": "chroma",
        "in_channels": sd["x_embedder.weight"].shape[1],
        "out_channels": sd["proj_out.weight"].shape[0],
        "vec_in_dim": None,
        "context_in_dim": sd["context_embedder.weight"].shape[1],
        "hidden_size": hidden,
        "mlp_ratio": 4.0,
        "num_heads": hidden // head,
        "depth": count("transformer_blocks"),
        "depth_single_blocks": count("single_transformer_blocks"),
        "axes_dim": [4, 6, 6],  # tests/diffusers_tiny_chroma.py's axes_dims_rope
        "theta": 10000,
        "patch_size": 2,  # diffusers packs 2×2 latent patches outside the model; ComfyUI inside it
        "qkv_bias": True,
        "txt_ids_dims": [],
        "in_dim": sd["distilled_guidance_layer.in_proj.weight"].shape[1],
        "out_dim": sd["distilled_guidance_layer.out_proj.weight"].shape[0],
        "hidden_dim": sd["distilled_guidance_layer.in_proj.weight"].shape[0],
        "n_layers": len({k.split(".")[2] for k in sd if k.startswith("distilled_guidance_layer.layers.")}),
    }


def approximator(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if not k.startswith("distilled_guidance_layer."):
            continue
        k = re.sub(r"\.layers\.(\d+)\.linear_1\.", r".layers.\1.in_layer.", k)
        k = re.sub(r"\.layers\.(\d+)\.linear_2\.", r".layers.\1.out_layer.", k)
        k = re.sub(r"\.norms\.(\d+)\.weight$", r".norms.\1.scale", k)
        out[k] = v
    return out


def build(sd: dict):
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.Chroma(unet_config(sd))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "")
    converted = {**comfy.model_detection.convert_diffusers_mmdit(sd, ""), **approximator(sd)}
    missing, unexpected = model.diffusion_model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"diffusers Chroma → ComfyUI Chroma: missing {missing}, unexpected {unexpected}")
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
