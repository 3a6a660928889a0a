"""A tiny random Z-Image diffusers pipeline of the real classes (ZImagePipeline: ZImageTransformer2DModel,
AutoencoderKL, FlowMatchEulerDiscreteScheduler, transformers' Qwen3Model and Qwen2Tokenizer), with a tokenizer
written here (nothing downloaded). `save_tiny_z_image(folder)` writes a pipeline folder with `save_pretrained`
that the production loader reads back with `local_files_only`.

Sizes: Qwen3 text encoder 2 layers × 32 wide (the caption features the transformer takes, hidden_states[-2]);
transformer 64 wide, 2 heads × 32 (= sum of the RoPE axes), 1 main layer and 1 noise / 1 context refiner,
patch 2; VAE as tests/diffusers_tiny.py (scale 2, 16 latent channels). 16 px → 8 × 8 latents → 16 patches.

`tiny_z_image_transformer(comfy_compatible=True)` is 1024 wide instead: ComfyUI's NextDiT hard-codes a
timestep MLP of min(dim, 1024) hidden units where diffusers has 1024, so only a transformer at least 1024
wide has the same weights in both (tests/comfyui/test_diffusers_lora_z_image_in_comfyui.py).
"""

from __future__ import annotations

import os

import torch
from diffusers_tiny import _byte_vocab, _vae

CAP_DIM = 32  # the tiny Qwen3's hidden size: the transformer's cap_feat_dim
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen3's chat template with enable_thinking=True renders a user turn as below (ComfyUI's ZImageTokenizer
# writes the same text: "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_qwen_tokenizer(folder: str) -> None:
    """A Qwen2Tokenizer (byte-level BPE without merges over tests/diffusers_tiny.py's byte vocabulary) with
    Qwen's special tokens and a chat template."""
    import json

    os.makedirs(folder, exist_ok=True)
    vocab = {t: i for i, t in enumerate(t for t in _byte_vocab() if not t.startswith("<|"))}
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(
        os.path.join(folder, "vocab.json"),
        os.path.join(folder, "merges.txt"),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL[1:],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)


def _tokenizer(tmp: str):
    from transformers import AutoTokenizer

    write_qwen_tokenizer(os.path.join(tmp, "tokenizer"))
    return AutoTokenizer.from_pretrained(os.path.join(tmp, "tokenizer"), local_files_only=True)


def _qwen3(seed: int, vocab_size: int):
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    return Qwen3Model(
        Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=CAP_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
        )
    ).eval()


def tiny_z_image_transformer(seed: int = 0, comfy_compatible: bool = False):
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    dim, heads, axes = (1024, 8, (32, 48, 48)) if comfy_compatible else (64, 2, (8, 12, 12))
    model = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=dim,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=heads,
        n_kv_heads=heads,
        qk_norm=True,
        cap_feat_dim=CAP_DIM,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=list(axes),
        axes_lens=[1024, 64, 64],
    ).eval()
    with torch.no_grad():  # the pad tokens start at zero; random ones make the padding visible in tests
        model.x_pad_token.normal_()
        model.cap_pad_token.normal_()
    return model


def build_tiny_z_image(tmp: str, seed: int = 0, dynamic_shift: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    tokenizer = _tokenizer(tmp)
    scheduler = (
        FlowMatchEulerDiscreteScheduler(
            shift=1.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        if dynamic_shift
        else FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)  # Z-Image-Turbo's
    )
    return ZImagePipeline(
        transformer=tiny_z_image_transformer(seed),
        scheduler=scheduler,
        vae=_vae(seed + 1, shift=0.1159),  # Z-Image uses FLUX's VAE: scaling 0.3611, shift 0.1159
        text_encoder=_qwen3(seed + 2, len(tokenizer)),
        tokenizer=tokenizer,
    )


def save_tiny_z_image(folder: str, seed: int = 0, dynamic_shift: bool = False) -> str:
    build_tiny_z_image(folder + ".tok", seed, dynamic_shift).save_pretrained(folder)
    return folder
