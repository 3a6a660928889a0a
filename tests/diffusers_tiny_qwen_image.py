"""A tiny random Qwen-Image diffusers pipeline built from the real classes (QwenImagePipeline with
QwenImageTransformer2DModel, AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, Qwen2_5_VLForConditionalGeneration
and a Qwen2Tokenizer written here: nothing downloaded). `save_tiny_qwen_image(folder)` writes a pipeline folder with
`save_pretrained` that the production loader reads back with `local_files_only`.

Sizes: transformer 2 blocks × 2 heads × 16 (rope axes 4 + 6 + 6 = the head dim), text width 32; Qwen2.5-VL text
model 1 layer, width 32 (its vision tower is built, tiny, and never used for text); VAE base width 8, one spatial
2× down/up sampling (scale factor 2), 16 latent channels. 16 px images → 8 × 8 latents → 16 packed tokens. The
scheduler config is Qwen-Image's own (dynamic shifting between sequence lengths 256 and 8192, shift_terminal).
"""

from __future__ import annotations

import os

import torch
from diffusers_tiny import _byte_vocab  # tests/ is on sys.path, as for the other tiny builders

TEXT_DIM = 32  # the tiny Qwen2.5-VL width = the transformer's joint_attention_dim (3584 in Qwen-Image)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SCHEDULER_CONFIG = dict(  # Qwen/Qwen-Image scheduler/scheduler_config.json
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=8192,
    max_shift=0.9,
    num_train_timesteps=1000,
    shift=1.0,
    shift_terminal=0.02,
    time_shift_type="exponential",
    use_dynamic_shifting=True,
)


def _vocab() -> dict[str, int]:
    """GPT-2's byte-level characters (no merges: one token per byte) and Qwen's chat special tokens."""
    chars = [t for t in _byte_vocab() if len(t) == 1]
    return {t: i for i, t in enumerate(chars + list(SPECIALS))}


def write_qwen_tokenizer(folder: str) -> None:
    """A Qwen2Tokenizer (byte-level BPE without merges) knowing <|im_start|> / <|im_end|>, saved to `folder`."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(
        vocab=_vocab(),
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.save_pretrained(folder)


def _tokenizer(folder: str):
    from transformers import Qwen2Tokenizer

    write_qwen_tokenizer(folder)
    return Qwen2Tokenizer.from_pretrained(folder, local_files_only=True)


def _text_encoder(seed: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab = _vocab()
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=TEXT_DIM,
            intermediate_size=2 * TEXT_DIM,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=vocab["<|endoftext|>"],
            bos_token_id=vocab["<|endoftext|>"],
            eos_token_id=vocab["<|im_end|>"],
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=TEXT_DIM,
            fullatt_block_indexes=[0],
        ),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen_image_transformer(seed: int = 0):
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False]
    ).eval()


def build_tiny_qwen_image(tmp: str, seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    return QwenImagePipeline(
        transformer=tiny_qwen_image_transformer(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=_vae(seed + 1),
        text_encoder=_text_encoder(seed + 2),
        tokenizer=_tokenizer(os.path.join(tmp, "tokenizer")),
    )


def save_tiny_qwen_image(folder: str, seed: int = 0) -> str:
    build_tiny_qwen_image(folder + ".tok", seed).save_pretrained(folder)
    return folder
