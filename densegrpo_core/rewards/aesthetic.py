"""LAION aesthetic predictor v2 ("improved aesthetic predictor"): an MLP on the L2-normalised CLIP ViT-L/14
image embedding, trained on SAC + LOGOS + AVA ratings (the reward of DDPO and Flow-GRPO's aesthetic task).

    score = MLP(e / |e|),  e = CLIP image embedding            ≈ 1-10 ("how much people like it")

Files (one folder, e.g. ComfyUI/models/reward_models/aesthetic/): the head
`sac+logos+ava1-l14-linearMSE.pth` (or a .safetensors of it) and the openai clip-vit-large-patch14
transformers files (`config.json`, `model.safetensors`, `preprocessor_config.json`) in the same folder or in
a `clip/` subfolder. The path may also name the head file itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DEFAULT_BATCH_SIZE, BatchedReward, resolve_device, resolve_dtype
from .cache import cached_model
from .hf_clip import load_hf_clip
from .model_files import comfy_hint, find_file, load_matching, load_weights, require_path

COMFY_FOLDER = "aesthetic"
HEAD_FILES = (
    "sac+logos+ava1-l14-linearMSE.safetensors",
    "sac+logos+ava1-l14-linearMSE.pth",
    "*-linearMSE.safetensors",
    "*-linearMSE.pth",
    "aesthetic*.safetensors",
    "aesthetic*.pth",
)
HIDDEN = (1024, 128, 64, 16)
EXPECTED = (
    "the aesthetic head sac+logos+ava1-l14-linearMSE.pth (or .safetensors) and the clip-vit-large-patch14 "
    "files (config.json, model.safetensors, preprocessor_config.json) beside it or in clip/"
)


class AestheticHead(nn.Module):
    """The upstream MLP; keys layers.0/2/4/6/7 as in its .pth. Input width = the CLIP projection dim (768 for L/14)."""

    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, HIDDEN[0]),
            nn.Dropout(0.2),
            nn.Linear(HIDDEN[0], HIDDEN[1]),
            nn.Dropout(0.2),
            nn.Linear(HIDDEN[1], HIDDEN[2]),
            nn.Dropout(0.1),
            nn.Linear(HIDDEN[2], HIDDEN[3]),
            nn.Linear(HIDDEN[3], 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding).squeeze(-1)


class AestheticReward(BatchedReward):
    name = "aesthetic"

    def __init__(self, clip, head: AestheticHead, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(clip.device, batch_size)
        self.clip, self.head = clip, head

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        emb = F.normalize(self.clip.encode_images(images), dim=-1)  # (b, D) float32
        return self.head(emb)  # (b,); the head stays float32


def find_aesthetic_files(path) -> tuple[Path, Path]:
    """(head file, CLIP folder) from the reward's folder or its head file."""
    p = require_path(path, "aesthetic", COMFY_FOLDER, EXPECTED)
    folder = p.parent if p.is_file() else p
    head = p if p.is_file() else find_file(folder, HEAD_FILES)
    if head is None:
        raise FileNotFoundError(
            f"reward 'aesthetic': no aesthetic head in {folder}; expected "
            f"sac+logos+ava1-l14-linearMSE.pth (or .safetensors) "
            f"(put it in {comfy_hint(COMFY_FOLDER)})"
        )
    clip_dir = folder if (folder / "config.json").is_file() else folder / "clip"
    if not (clip_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"reward 'aesthetic': no CLIP model beside the head: expected config.json, "
            f"model.safetensors and preprocessor_config.json of clip-vit-large-patch14 in "
            f"{folder} or {folder / 'clip'} (put them in {comfy_hint(COMFY_FOLDER)}clip/)"
        )
    return head, clip_dir


def load_aesthetic(path, device=None, dtype=None, batch_size: int = DEFAULT_BATCH_SIZE) -> AestheticReward:
    head_file, clip_dir = find_aesthetic_files(path)
    device = resolve_device(device)
    clip = load_hf_clip(clip_dir, "aesthetic", COMFY_FOLDER, device, resolve_dtype(dtype, device), need_text=False)

    def build() -> AestheticHead:
        state = load_weights(head_file)
        first = state.get("layers.0.weight")
        if first is not None and first.ndim == 2 and first.shape[1] != clip.projection_dim:
            raise ValueError(
                f"aesthetic head {head_file} takes {first.shape[1]}-wide embeddings but the CLIP model in "
                f"{clip_dir} has projection dim {clip.projection_dim} (the L/14 head needs CLIP ViT-L/14)"
            )
        head = AestheticHead(clip.projection_dim)
        load_matching(head, state, head_file, "aesthetic MLP head (layers.0/2/4/6/7)")
        return head.to(device).eval().requires_grad_(False)

    head = cached_model(("aesthetic_head", str(head_file.resolve()), str(device)), build)
    return AestheticReward(clip, head, batch_size)
