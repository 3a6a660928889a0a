"""Tiny random FLUX.2 diffusers pipelines built from the real diffusers / transformers classes, with tokenizers
written here (nothing downloaded): `save_tiny_flux2(folder)` (Flux2Pipeline: Mistral3 text encoder with a
PixtralProcessor, guidance embedding) and `save_tiny_flux2_klein(folder)` (Flux2KleinPipeline: Qwen3 text
encoder, true CFG, no guidance embedding), written with `save_pretrained` for the production loader.

Sizes: transformer 1 double + 1 single block, 2 heads × 16, 128 latent channels (as the real model: the VAE's 32
channels patchified 2×2), rope axes (4, 4, 4, 4); AutoencoderKLFlux2 with 2 down blocks (scale 2) and random
batch-norm statistics, so 4 px per latent pixel: 16 px images → 4 × 4 latents → 16 tokens. The text encoders
have as many layers as the pipelines read hidden states from ((10, 20, 30) for Mistral, (9, 18, 27) for Qwen3),
8 wide: prompt embeddings are 3 × 8 = 24 wide. Both tokenizers are byte-level BPEs without merges
(`diffusers_tiny._byte_vocab`) plus the chat-template special tokens.
"""

from __future__ import annotations

import os

import torch
from diffusers_tiny import _byte_vocab

TEXT_HIDDEN = 8  # text encoder width; the transformer's joint_attention_dim is 3× (three hidden-state layers)
LATENT_CHANNELS = 32  # the VAE's; the transformer sees 4× as many (2×2 patches)

# Chat templates: enough of Mistral's / Qwen3's to render what the pipelines pass (system + user messages with
# text contents; Qwen3's generation prompt with thinking disabled)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{%- for m in messages -%}"
    "{%- set text = m['content'] if m['content'] is string else m['content'] | map(attribute='text') | join('') -%}"
    "{%- if m['role'] == 'system' -%}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{%- else -%}[INST]{{ text }}[/INST]{%- endif -%}{%- endfor -%}"
)
QWEN3_TEMPLATE = (
    "{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false -%}<think>\n\n</think>\n\n{%- endif -%}"
    "{%- endif -%}"
)


def _bpe_tokenizer(specials: list[str], **kw):
    """A byte-level BPE (transformers' Qwen2Tokenizer class, no merges) with `specials` as special tokens."""
    from transformers import Qwen2Tokenizer

    vocab = {t: i for i, t in enumerate(t for t in _byte_vocab() if not t.startswith("<|"))}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], **kw)
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


def _transformer(seed: int, guidance_embeds: bool):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_HIDDEN,
        timestep_guidance_channels=256,
        mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4),
        rope_theta=2000,
        guidance_embeds=guidance_embeds,
    ).eval()


def _vae(seed: int):
    """AutoencoderKLFlux2 (scale 2) whose batch-norm statistics are random, so their use shows."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=16,
    ).eval()
    with torch.no_grad():
        vae.bn.running_mean.normal_(0.0, 0.3)
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def _scheduler():
    """FLUX.2's scheduler config (FLUX.2-dev / klein scheduler_config.json): dynamic exponential shifting."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def _mistral3(seed: int):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    torch.manual_seed(seed)
    vocab = len(_byte_vocab()) + 16
    text = MistralConfig(
        vocab_size=vocab,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=16,
        num_hidden_layers=30,  # Flux2Pipeline reads hidden states 10, 20, 30
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        max_position_embeddings=1024,
    )
    vision = PixtralVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, head_dim=4, image_size=32
    )
    return Mistral3ForConditionalGeneration(Mistral3Config(vision_config=vision, text_config=text)).eval()


def _pixtral_processor(tmp: str):
    from transformers import PixtralImageProcessor, PixtralProcessor

    tok = _bpe_tokenizer(
        ["<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]"]
        + ["[IMG_END]"],
        unk_token=None,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(), tokenizer=tok, chat_template=MISTRAL_TEMPLATE)
    processor.save_pretrained(os.path.join(tmp, "processor"))
    return PixtralProcessor.from_pretrained(os.path.join(tmp, "processor"), local_files_only=True)


def _qwen3(seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(_byte_vocab()) + 16,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=16,
            num_hidden_layers=27,  # Flux2KleinPipeline reads hidden states 9, 18, 27
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=4,
            max_position_embeddings=1024,
        )
    ).eval()


def _qwen_tokenizer(tmp: str):
    from transformers import Qwen2TokenizerFast

    tok = _bpe_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], unk_token=None)
    tok.chat_template = QWEN3_TEMPLATE
    tok.save_pretrained(os.path.join(tmp, "qwen_tokenizer"))
    return Qwen2TokenizerFast.from_pretrained(os.path.join(tmp, "qwen_tokenizer"), local_files_only=True)


def build_tiny_flux2(tmp: str, seed: int = 0):
    from diffusers import Flux2Pipeline

    return Flux2Pipeline(
        scheduler=_scheduler(),
        vae=_vae(seed + 1),
        text_encoder=_mistral3(seed + 2),
        tokenizer=_pixtral_processor(tmp),
        transformer=_transformer(seed, guidance_embeds=True),
    )


def build_tiny_flux2_klein(tmp: str, seed: int = 0, is_distilled: bool = False):
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline(
        scheduler=_scheduler(),
        vae=_vae(seed + 1),
        text_encoder=_qwen3(seed + 2),
        tokenizer=_qwen_tokenizer(tmp),
        transformer=_transformer(seed, guidance_embeds=False),
        is_distilled=is_distilled,
    )


def save_tiny_flux2(folder: str, seed: int = 0) -> str:
    build_tiny_flux2(folder + ".tok", seed).save_pretrained(folder)
    return folder


def save_tiny_flux2_klein(folder: str, seed: int = 0, is_distilled: bool = False) -> str:
    build_tiny_flux2_klein(folder + ".tok", seed, is_distilled).save_pretrained(folder)
    return folder
