"""Tiny random reward models of the real classes, written to disk in the layouts of the published checkpoints:

- transformers CLIP folder (PickScore_v1 / clip-vit-large-patch14 layout): config.json + model.safetensors,
  preprocessor_config.json, tokenizer.json (a byte-level CLIP BPE with a handful of merges);
- HPSv2: open_clip_config.json ({"model_cfg", "preprocess_cfg"}) + HPS_v2_compressed.pt = {"state_dict": ...};
- aesthetic: sac+logos+ava1-l14-linearMSE.pth (a plain state dict, keys layers.0/2/4/6/7) + a CLIP in clip/.
Hidden width 32, 2 layers, 32-pixel images in 8-pixel patches: loading and scoring take milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

IMAGE_SIZE = 32
PROJECTION_DIM = 24
TEXT_CONTEXT = 16
MERGES = ["a t</w>", "c at</w>", "r e", "re d</w>", "o g</w>", "d og</w>", "b l", "bl u", "blu e</w>"]
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HPS_FILE = "HPS_v2_compressed.pt"


def _byte_chars() -> list[str]:
    """CLIP's byte → printable character map (the base alphabet of its BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_vocab() -> dict[str, int]:
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in MERGES]
    return {t: i for i, t in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=tiny_vocab(), merges=[tuple(m.split()) for m in MERGES])


def write_processor(folder: Path, tokenizer: bool = True) -> Path:
    """preprocessor_config.json (+ tokenizer files) as the published CLIP checkpoints hold them."""
    from transformers import CLIPImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(str(folder))
    if tokenizer:
        tiny_tokenizer().save_pretrained(str(folder))
    return folder


def write_clip_model(folder: Path, seed: int = 0, projection_dim: int = PROJECTION_DIM) -> Path:
    """config.json + model.safetensors of a tiny random transformers CLIPModel."""
    from transformers import CLIPConfig, CLIPModel

    vocab = tiny_vocab()
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TEXT_CONTEXT,
            eos_token_id=eos,
            bos_token_id=bos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_clip_folder(
    folder: Path, seed: int = 0, processor_subdir: str | None = None, projection_dim: int = PROJECTION_DIM
) -> Path:
    write_clip_model(folder, seed, projection_dim)
    write_processor(folder / processor_subdir if processor_subdir else folder)
    return folder


HPS_MODEL_CFG = {
    "embed_dim": PROJECTION_DIM,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": TEXT_CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_hps_folder(folder: Path, seed: int = 0, safetensors: bool = False) -> Path:
    """open_clip_config.json + HPS_v2_compressed.pt ({"state_dict": ...}, as the HPSv2 release) of a tiny CLIP."""
    from open_clip.model import CLIP

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": HPS_MODEL_CFG, "preprocess_cfg": {}}))
    torch.manual_seed(seed)
    state = CLIP(**HPS_MODEL_CFG).state_dict()
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "HPS_v2_compressed.safetensors"))
    else:
        torch.save({"state_dict": state}, folder / HPS_FILE)
    return folder


def aesthetic_head_state(in_dim: int = PROJECTION_DIM, seed: int = 0) -> dict[str, torch.Tensor]:
    from densegrpo_core.rewards.aesthetic import AestheticHead

    torch.manual_seed(seed)
    return AestheticHead(in_dim).state_dict()


def write_aesthetic_folder(folder: Path, seed: int = 0) -> Path:
    """The head .pth (a plain state dict, as upstream saves it) and a tiny CLIP in clip/."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(aesthetic_head_state(seed=seed), folder / HEAD_FILE)
    write_clip_folder(folder / "clip", seed)
    return folder


def known_image(h: int = 40, w: int = 59) -> torch.Tensor:
    """A deterministic non-square test image (H, W, 3) in [0, 1], exactly representable in uint8: gradients,
    a sharp-edged square and a checkerboard corner, so that resize, crop and normalise all show."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([x, y, 0.5 + 0.5 * torch.sin(6 * x + 4 * y)], -1)
    img[h // 4 : h // 2, w // 3 : w // 2] = torch.tensor([0.9, 0.1, 0.2])
    img[-8:, -8:] = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float()[..., None]
    return (img * 255).round() / 255


def random_images(n: int, size: int = IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, size, size, 3, generator=torch.Generator().manual_seed(seed))
