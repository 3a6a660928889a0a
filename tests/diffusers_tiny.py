"""Tiny random SD3.5 and FLUX diffusers pipelines built from the real diffusers / transformers classes, with
tokenizers written here (nothing downloaded). `save_tiny_sd35(folder)` / `save_tiny_flux(folder)` write a
pipeline folder with `save_pretrained` that the production loader reads back with `local_files_only`.

Sizes: SD3.5 transformer 2 blocks × 2 heads × 64 (ComfyUI's SD3 detection requires head dim 64 and as many
heads as blocks), both blocks dual-attention (SD3.5), qk RMS norm; VAE with 2 down blocks (scale factor 2), 16
latent channels. 16 px images → 8 × 8 latents → 16 tokens.
"""

from __future__ import annotations

import json
import os

import torch

SD3_DIM = 128


def _byte_vocab() -> dict[str, int]:
    """A byte-level BPE vocabulary without merges: every byte char, alone and as end-of-word, plus specials."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in bs]  # GPT-2's byte → unicode map
    chars = [chr(b) for b in bs] + [chr(256 + i) for i in range(len(extra))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def write_tokenizer(folder: str, max_length: int = 16) -> None:
    """A CLIPTokenizer (vocab.json + merges.txt, no merges) whose ids cover `len(_byte_vocab())`."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(_byte_vocab(), f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(
        os.path.join(folder, "vocab.json"),
        os.path.join(folder, "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(folder)


def _tokenizer(tmp: str, name: str, max_length: int = 16):
    from transformers import CLIPTokenizer

    write_tokenizer(os.path.join(tmp, name), max_length)
    return CLIPTokenizer.from_pretrained(os.path.join(tmp, name), local_files_only=True)


def _clip(hidden: int, projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(_byte_vocab()),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=hidden,
        bos_token_id=len(_byte_vocab()) - 2,
        eos_token_id=len(_byte_vocab()) - 1,
        pad_token_id=len(_byte_vocab()) - 1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5(d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            vocab_size=len(_byte_vocab()),
            d_model=d_model,
            d_ff=2 * d_model,
            d_kv=8,
            num_layers=1,
            num_heads=2,
            decoder_start_token_id=0,
        )
    ).eval()


def _vae(seed: int, shift: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=1.5,
        shift_factor=shift,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def tiny_sd35_transformer(seed: int = 0, pos_embed_max_size: int = 8):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=64,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=SD3_DIM,
        pooled_projection_dim=64,
        pos_embed_max_size=pos_embed_max_size,
        dual_attention_layers=(0, 1),
        qk_norm="rms_norm",
    ).eval()


def build_tiny_sd35(tmp: str, seed: int = 0, pos_embed_max_size: int = 8):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=tiny_sd35_transformer(seed, pos_embed_max_size),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(seed + 1, shift=0.06),
        text_encoder=_clip(32, True, seed + 2),
        tokenizer=_tokenizer(tmp, "tok1"),
        text_encoder_2=_clip(32, True, seed + 3),
        tokenizer_2=_tokenizer(tmp, "tok2"),
        text_encoder_3=_t5(64, seed + 4),
        tokenizer_3=_tokenizer(tmp, "tok3"),
    )


def build_tiny_flux(tmp: str, seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_vae(seed + 1, shift=0.1),
        text_encoder=_clip(32, False, seed + 2),
        tokenizer=_tokenizer(tmp, "tok1"),
        text_encoder_2=_t5(32, seed + 3),
        tokenizer_2=_tokenizer(tmp, "tok2"),
    )


def save_tiny_sd35(folder: str, seed: int = 0, pos_embed_max_size: int = 8) -> str:
    """pos_embed_max_size patches a side: 8 = up to 32 px images (VAE scale 2, patch 2)."""
    build_tiny_sd35(folder + ".tok", seed, pos_embed_max_size).save_pretrained(folder)
    return folder


def save_tiny_flux(folder: str, seed: int = 0) -> str:
    build_tiny_flux(folder + ".tok", seed).save_pretrained(folder)
    return folder
