"""Qwen-Image: ComfyUI's QwenImage network (comfy/ldm/qwen_image/model.py QwenImageTransformer2DModel) as
model_detection configures it. Detection reads only `in_channels` (64: 16 latent channels packed 2×2) and the depth
(60 blocks) from the checkpoint; the class defaults give the rest: inner width 3072 = 24 heads × 128, rope axes
16 + 56 + 56, Qwen2.5-VL context width 3584, patch 2 (about 20 B parameters)."""

CONTEXT_TOKENS = 128  # ComfyUI's Qwen text encoder keeps the prompt's own tokens (the chat template is dropped)
LATENT_CHANNELS = 16  # Wan 2.1 latent format (the network sees (B, 16, 1, h, w))
LATENT_DOWNSCALE = 8
USES_CFG = True  # true CFG with a negative prompt (QwenImagePipeline true_cfg_scale 4.0)

REAL_SIZES = {
    "Qwen-Image": {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60},
}


def build(unet_config, dtype, device, operations):
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(**unet_config, dtype=dtype, device=device, operations=operations)
