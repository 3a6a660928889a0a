"""ComfyUI's own Flux2 model from a diffusers Flux2Transformer2DModel state dict, for comfy_lora_worker.py's
`builder` hook (test code; run with ComfyUI's python).

UNETLoader cannot load such a file: comfy.model_detection.convert_diffusers_mmdit takes any state dict with
`x_embedder.weight` for FLUX.1 and reads `x_embedder.bias`, which FLUX.2 has not; and ComfyUI's detection of an
original-format FLUX.2 file hard-codes the real widths (48 heads, rope axes 4 × 32). So `build(sd)` converts the
keys to the original (ComfyUI) format — the inverse of diffusers' loaders/single_file_utils.py
`convert_flux2_transformer_checkpoint_to_diffusers`: renames, q/k/v concatenated into the fused qkv, the final
adaLN's (scale, shift) swapped back to (shift, scale) — reads the widths from the weights, builds ComfyUI's class
from `comfy.supported_models.Flux2` with that unet_config and loads the converted weights (strict).
"""

from __future__ import annotations

import re

import torch

RENAMES = [  # diffusers → ComfyUI, applied in order (inverse of FLUX2_TRANSFORMER_KEYS_RENAME_DICT and block maps)
    (r"^x_embedder\.", "img_in."),
    (r"^context_embedder\.", "txt_in."),
    (r"^time_guidance_embed\.timestep_embedder\.linear_1\.", "time_in.in_layer."),
    (r"^time_guidance_embed\.timestep_embedder\.linear_2\.", "time_in.out_layer."),
    (r"^time_guidance_embed\.guidance_embedder\.linear_1\.", "guidance_in.in_layer."),
    (r"^time_guidance_embed\.guidance_embedder\.linear_2\.", "guidance_in.out_layer."),
    (r"^(double_stream_modulation_(?:img|txt)|single_stream_modulation)\.linear\.", r"\1.lin."),
    (r"^proj_out\.", "final_layer.linear."),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_q\.weight$", r"double_blocks.\1.img_attn.norm.query_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_k\.weight$", r"double_blocks.\1.img_attn.norm.key_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight$", r"double_blocks.\1.txt_attn.norm.query_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight$", r"double_blocks.\1.txt_attn.norm.key_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.to_out\.0\.", r"double_blocks.\1.img_attn.proj."),
    (r"^transformer_blocks\.(\d+)\.attn\.to_add_out\.", r"double_blocks.\1.txt_attn.proj."),
    (r"^transformer_blocks\.(\d+)\.ff\.linear_in\.", r"double_blocks.\1.img_mlp.0."),
    (r"^transformer_blocks\.(\d+)\.ff\.linear_out\.", r"double_blocks.\1.img_mlp.2."),
    (r"^transformer_blocks\.(\d+)\.ff_context\.linear_in\.", r"double_blocks.\1.txt_mlp.0."),
    (r"^transformer_blocks\.(\d+)\.ff_context\.linear_out\.", r"double_blocks.\1.txt_mlp.2."),
    (r"^single_transformer_blocks\.(\d+)\.attn\.to_qkv_mlp_proj\.", r"single_blocks.\1.linear1."),
    (r"^single_transformer_blocks\.(\d+)\.attn\.to_out\.", r"single_blocks.\1.linear2."),
    (r"^single_transformer_blocks\.(\d+)\.attn\.norm_q\.weight$", r"single_blocks.\1.norm.query_norm.scale"),
    (r"^single_transformer_blocks\.(\d+)\.attn\.norm_k\.weight$", r"single_blocks.\1.norm.key_norm.scale"),
]
QKV = {"to_": "img_attn", "add_": "txt_attn"}  # to_q/k/v → img_attn.qkv; add_q/k/v_proj → txt_attn.qkv


def comfy_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Flux2Transformer2DModel state dict in ComfyUI's (BFL's original) key format."""
    out, qkv = {}, {}
    for key, value in sd.items():
        m = re.fullmatch(r"transformer_blocks\.(\d+)\.attn\.(to_|add_)([qkv])(?:_proj)?\.weight", key)
        if m:
            qkv.setdefault((m.group(1), QKV[m.group(2)]), {})[m.group(3)] = value
            continue
        if key == "norm_out.linear.weight":  # diffusers (scale, shift) → ComfyUI's adaLN (shift, scale)
            scale, shift = value.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale], dim=0)
            continue
        new = key
        for pattern, repl in RENAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        else:
            raise ValueError(f"no ComfyUI name for diffusers FLUX.2 key {key!r}")
        out[new] = value
    for (block, stream), parts in qkv.items():
        out[f"double_blocks.{block}.{stream}.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def unet_config(sd: dict[str, torch.Tensor]) -> dict:
    """ComfyUI's Flux2 unet_config (the keys comfy/model_detection.py sets for FLUX.2) with the widths of `sd`
    (ComfyUI format)."""
    hidden, in_channels = sd["img_in.weight"].shape
    head_dim = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("double_blocks."))
    single = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("single_blocks."))
    return {
        "image_model": "flux2",
        "in_channels": in_channels,
        "out_channels": sd["final_layer.linear.weight"].shape[0],
        "vec_in_dim": None,
        "context_in_dim": sd["txt_in.weight"].shape[1],
        "hidden_size": hidden,
        "mlp_ratio": sd["double_blocks.0.img_mlp.2.weight"].shape[1] / hidden,
        "num_heads": hidden // head_dim,
        "depth": depth,
        "depth_single_blocks": single,
        "axes_dim": [head_dim // 4] * 4,
        "theta": 2000,
        "patch_size": 1,
        "qkv_bias": False,
        "guidance_embed": "guidance_in.in_layer.weight" in sd,
        "txt_ids_dims": [3],
        "global_modulation": True,
        "mlp_silu_act": True,
        "ops_bias": False,
        "default_ref_method": "index",
        "ref_index_scale": 10.0,
    }


def build(sd: dict[str, torch.Tensor]):
    """A ModelPatcher over ComfyUI's Flux2 with the weights of the diffusers state dict `sd`, float32."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    converted = comfy_state_dict(sd)
    config = comfy.supported_models.Flux2(unet_config(converted))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "")
    missing, unexpected = model.diffusion_model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"converted FLUX.2 state dict does not fit: missing {missing}, unexpected {unexpected}")
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
