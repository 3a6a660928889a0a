"""HPSv2 / HPSv2.1 (Wu et al., 2023): an open_clip ViT-H-14 fine-tuned on Human Preference Dataset v2.

    score = cos(image_emb, text_emb)                           ≈ 0.25-0.30 for real images (HPSv2's own scorer)

Preprocessing as HPSv2 scores: resize the longest edge to 224 (bicubic), center pad with black, normalise
with the OpenAI CLIP mean/std; tokenizer: open_clip's bundled CLIP BPE (context 77).

Files (e.g. ComfyUI/models/reward_models/hpsv2/): `HPS_v2.1_compressed.pt` or `HPS_v2_compressed.pt`
(a {"state_dict": ...} torch file, read with weights_only=True) or a .safetensors of that state dict. An
optional `open_clip_config.json` beside it ({"model_cfg": ..., "preprocess_cfg": ...}, the layout of
open_clip's Hugging Face repos) replaces the built-in ViT-H-14 architecture and preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import DEFAULT_BATCH_SIZE, BatchedReward, resolve_device, resolve_dtype
from .cache import cached_model
from .clip_preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocess
from .model_files import comfy_hint, find_file, load_matching, load_weights, require_path

COMFY_FOLDER = "hpsv2"
ARCHITECTURE = "ViT-H-14"
CONFIG_FILE = "open_clip_config.json"
CHECKPOINTS = (
    "HPS_v2.1_compressed.safetensors",
    "HPS_v2.1_compressed.pt",
    "HPS_v2_compressed.safetensors",
    "HPS_v2_compressed.pt",
    "HPS_v2*.safetensors",
    "HPS_v2*.pt",
)
EXPECTED = "HPS_v2.1_compressed.pt or HPS_v2_compressed.pt (or a .safetensors of its state dict)"


@dataclass(eq=False)
class OpenClipModel:
    model: torch.nn.Module
    tokenizer: object
    preprocess: ClipPreprocess
    device: torch.device
    dtype: torch.dtype


class HPSv2Reward(BatchedReward):
    name = "hpsv2"

    def __init__(self, clip: OpenClipModel, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(clip.device, batch_size)
        self.clip = clip

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        c = self.clip
        img = c.model.encode_image(c.preprocess(images).to(c.dtype), normalize=True).float()  # (b, D)
        unique = list(dict.fromkeys(prompts))
        txt = c.model.encode_text(c.tokenizer(unique).to(c.device), normalize=True).float()  # (u, D)
        txt = txt[torch.tensor([unique.index(p) for p in prompts], device=txt.device)]  # (b, D)
        return (img * txt).sum(-1)  # (b,)


def find_hpsv2_files(path) -> tuple[Path, Path | None]:
    """(checkpoint, open_clip_config.json or None) from the checkpoint file or its folder."""
    p = require_path(path, "hpsv2", COMFY_FOLDER, EXPECTED)
    folder = p.parent if p.is_file() else p
    ckpt = p if p.is_file() else find_file(folder, CHECKPOINTS)
    if ckpt is None:
        raise FileNotFoundError(
            f"reward 'hpsv2': no HPS checkpoint in {folder}; expected {EXPECTED} (put it in {comfy_hint(COMFY_FOLDER)})"
        )
    config = folder / CONFIG_FILE
    return ckpt, config if config.is_file() else None


def _model_and_preprocess_cfg(config: Path | None) -> tuple[dict, dict]:
    import open_clip

    if config is None:
        return open_clip.get_model_config(ARCHITECTURE), {}
    try:
        data = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config} is not valid JSON: {e}") from None
    if not isinstance(data.get("model_cfg"), dict):
        raise ValueError(
            f'{config} has no \'model_cfg\' (expected {{"model_cfg": {{...}}, "preprocess_cfg": {{...}}}})'
        )
    return data["model_cfg"], data.get("preprocess_cfg") or {}


def _create_open_clip(model_cfg: dict, config) -> torch.nn.Module:
    """An open_clip CLIP from an architecture dict, random weights, nothing fetched."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = dict(model_cfg)
    if (
        "hf_model_name" in cfg.get("text_cfg", {})
        or "timm_model_name" in cfg.get("vision_cfg", {})
        or "multimodal_cfg" in cfg
    ):
        raise ValueError(
            f"{config or ARCHITECTURE}: only plain open_clip CLIP architectures are supported "
            f"(no Hugging Face text tower, timm vision tower or CoCa)"
        )
    cls = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    try:
        return cls(**cfg)
    except TypeError as e:
        raise ValueError(f"{config or ARCHITECTURE}: invalid open_clip model_cfg: {e}") from None


def load_hpsv2(path, device=None, dtype=None, batch_size: int = DEFAULT_BATCH_SIZE) -> HPSv2Reward:
    ckpt, config = find_hpsv2_files(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)

    def build() -> OpenClipModel:
        from open_clip.tokenizer import SimpleTokenizer

        model_cfg, preprocess_cfg = _model_and_preprocess_cfg(config)
        model = _create_open_clip(model_cfg, config)
        load_matching(model, load_weights(ckpt), ckpt, f"open_clip model ({config or ARCHITECTURE})")
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        preprocess = ClipPreprocess.from_open_clip_cfg(
            {
                "size": model.visual.image_size,
                "mean": OPENAI_CLIP_MEAN,
                "std": OPENAI_CLIP_STD,
                "interpolation": "bicubic",
                "resize_mode": "longest",
                "fill_color": 0,
                **preprocess_cfg,
            }
        )
        tokenizer = SimpleTokenizer(context_length=int(model_cfg.get("text_cfg", {}).get("context_length", 77)))
        return OpenClipModel(model, tokenizer, preprocess, device, dtype)

    key = ("hpsv2", str(ckpt.resolve()), str(config.resolve()) if config else "", str(device), str(dtype))
    return HPSv2Reward(cached_model(key, build), batch_size)
