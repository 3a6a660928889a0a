"""JPEG (in)compressibility, DDPO's weight-free rewards: the size of the image saved as JPEG at quality 95.

jpeg_compressibility   = -size_kB        (smaller files score higher)
jpeg_incompressibility = +size_kB        (1 kB = 1000 bytes; images quantised to uint8 first)
"""

from __future__ import annotations

import io
from typing import Sequence

import torch

from .base import check_reward_inputs

JPEG_QUALITY = 95


def jpeg_size_kb(images: torch.Tensor) -> torch.Tensor:
    """Encoded size of each image (B, H, W, 3) in [0, 1] as JPEG quality 95, in kB: → (B,) float32 on the CPU."""
    from PIL import Image

    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (B, H, W, 3)
    sizes = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY)
        sizes.append(buf.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegReward:
    def __init__(self, sign: float, name: str):
        self.sign, self.name = float(sign), name

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_reward_inputs(images, prompts)
        return (self.sign * jpeg_size_kb(images)).to(images.device)
