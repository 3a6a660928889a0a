"""PickScore (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

    score = exp(logit_scale) · cos(image_emb, text_emb)        ≈ 21-23 for real images, as the paper reports
    Flow-GRPO's variant divides by 26 (scale = 1/26) to bring it near [0, 1].

Files (one folder, e.g. ComfyUI/models/reward_models/pickscore/): the model files of the PickScore_v1
checkpoint (`config.json`, `model.safetensors` or `pytorch_model.bin`) and the processor files of the
laion CLIP-ViT-H-14-laion2B-s32B-b79K checkpoint (`preprocessor_config.json`, `tokenizer.json` or
`vocab.json` + `merges.txt`, …), either in the same folder or in a `processor/` subfolder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DEFAULT_BATCH_SIZE, BatchedReward, resolve_device, resolve_dtype
from .hf_clip import CLIP_FILES_TEXT, encode_unique_texts, load_hf_clip
from .model_files import require_path

COMFY_FOLDER = "pickscore"
FLOW_GRPO_SCALE = 1 / 26
EXPECTED = f"the PickScore_v1 folder ({CLIP_FILES_TEXT}; processor files may sit in processor/)"


class PickScoreReward(BatchedReward):
    def __init__(self, clip, scale: float = 1.0, batch_size: int = DEFAULT_BATCH_SIZE, name: str = "pickscore"):
        super().__init__(clip.device, batch_size)
        self.clip, self.scale, self.name = clip, float(scale), name

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        img = F.normalize(self.clip.encode_images(images), dim=-1)  # (b, D)
        txt = F.normalize(encode_unique_texts(self.clip, prompts, self.batch_size), dim=-1)  # (b, D)
        return self.scale * self.clip.logit_scale * (img * txt).sum(-1)  # (b,)


def load_pickscore(
    path, device=None, dtype=None, batch_size: int = DEFAULT_BATCH_SIZE, flow_grpo_scale: bool = False
) -> PickScoreReward:
    """PickScore from a local folder; `flow_grpo_scale` divides by 26 as Flow-GRPO does."""
    name = "pickscore_flowgrpo" if flow_grpo_scale else "pickscore"
    folder = require_path(path, name, COMFY_FOLDER, EXPECTED)
    device = resolve_device(device)
    clip = load_hf_clip(
        folder, name, COMFY_FOLDER, device, resolve_dtype(dtype, device), need_text=True, processor_dirs=("processor",)
    )
    return PickScoreReward(clip, FLOW_GRPO_SCALE if flow_grpo_scale else 1.0, batch_size, name)
