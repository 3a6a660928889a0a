"""A tiny random diffusers ChromaPipeline of the real classes (ChromaTransformer2DModel, AutoencoderKL,
FlowMatchEulerDiscreteScheduler with FLUX's dynamic shifting as Chroma1-HD's config, T5EncoderModel and an offline
tokenizer from diffusers_tiny). `save_tiny_chroma(folder)` writes it with `save_pretrained`.

Sizes: 1 double + 1 single block, 2 heads × 16 (hidden 32, rope axes 4 + 6 + 6), approximator 2 layers × 32;
T5 d_model 32; VAE scale 2 with 16 latent channels: 16 px images → 8 × 8 latents → 16 packed tokens.
"""

from __future__ import annotations

import torch
from diffusers_tiny import _t5, _tokenizer, _vae

CHROMA_TEXT_DIM = 32
# ComfyUI's Chroma always computes 344 modulation rows (comfy/ldm/chroma/model.py `mod_index_length = 344`, the
# real 19 double + 38 single blocks: 3·38 + 12·19 + 2) and takes the final layer's from the last two; diffusers
# sizes its table by the blocks (3·single + 12·double + 2). Both agree only for depths with 3·s + 12·d = 342:
# the transformer compared with ComfyUI's class uses 28 double + 2 single blocks.
COMFY_DEPTHS = (28, 2)


def tiny_chroma_transformer(seed: int = 0, num_layers: int = 1, num_single_layers: int = 1):
    from diffusers import ChromaTransformer2DModel

    torch.manual_seed(seed)
    return ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=CHROMA_TEXT_DIM,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=64,
        approximator_hidden_dim=32,
        approximator_layers=2,
    ).eval()


def build_tiny_chroma(tmp: str, seed: int = 0):
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return ChromaPipeline(
        transformer=tiny_chroma_transformer(seed),
        scheduler=scheduler,
        vae=_vae(seed + 1, shift=0.1),
        text_encoder=_t5(CHROMA_TEXT_DIM, seed + 2),
        tokenizer=_tokenizer(tmp, "tok"),
    )


def save_tiny_chroma(folder: str, seed: int = 0) -> str:
    build_tiny_chroma(folder + ".tok", seed).save_pretrained(folder)
    return folder
