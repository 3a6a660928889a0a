"""CLIPScore (Hessel et al., 2021), reference-free:

    score = 2.5 · max(cos(image_emb, text_emb), 0)             ∈ [0, 2.5]; ≈ 0.6-0.9 for matching real pairs

Files: any transformers CLIP folder (e.g. the openai clip-vit-large-patch14 checkpoint: `config.json`,
`model.safetensors`, `preprocessor_config.json`, `tokenizer.json` or `vocab.json` + `merges.txt`),
e.g. in ComfyUI/models/reward_models/clipscore/.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DEFAULT_BATCH_SIZE, BatchedReward, resolve_device, resolve_dtype
from .hf_clip import CLIP_FILES_TEXT, encode_unique_texts, load_hf_clip
from .model_files import require_path

COMFY_FOLDER = "clipscore"
CLIPSCORE_WEIGHT = 2.5  # w of Hessel et al.
EXPECTED = f"a transformers CLIP folder ({CLIP_FILES_TEXT})"


class ClipScoreReward(BatchedReward):
    name = "clipscore"

    def __init__(self, clip, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(clip.device, batch_size)
        self.clip = clip

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        img = F.normalize(self.clip.encode_images(images), dim=-1)  # (b, D)
        txt = F.normalize(encode_unique_texts(self.clip, prompts, self.batch_size), dim=-1)  # (b, D)
        return CLIPSCORE_WEIGHT * (img * txt).sum(-1).clamp(min=0)  # (b,)


def load_clipscore(path, device=None, dtype=None, batch_size: int = DEFAULT_BATCH_SIZE) -> ClipScoreReward:
    folder = require_path(path, "clipscore", COMFY_FOLDER, EXPECTED)
    device = resolve_device(device)
    clip = load_hf_clip(folder, "clipscore", COMFY_FOLDER, device, resolve_dtype(dtype, device), need_text=True)
    return ClipScoreReward(clip, batch_size)
