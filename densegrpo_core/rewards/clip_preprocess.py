"""CLIP image preprocessing in torch, so that images already on the GPU are scored there.

Matches the reference processors on uint8 images up to their rounding: transformers' CLIPImageProcessor
(resize shortest edge bicubic, center crop with floor offsets, normalise) and open_clip's eval transform
(resize shortest edge + center crop, or resize longest edge + center pad as HPSv2 scores; torchvision's
rounded crop offsets). Bicubic with antialias is torch's port of PIL's filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


@dataclass(frozen=True)
class ClipPreprocess:
    """(B, H, W, 3) in [0, 1] → (B, 3, h, w) normalised float32: resize, center crop or pad, normalise."""

    size: tuple[int, int]  # (h, w) of the model input
    resize: int | tuple[int, int]  # edge length the resize aims at ("squash": the (h, w) itself)
    mode: str = "shortest"  # shortest edge → resize then crop | longest → then pad | squash
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    crop_rounding: str = "floor"  # odd crop excess: floor (transformers) | round (torchvision)
    fill: float = 0.0  # pad value in [0, 1] pixel units (before normalising)

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {self.mean} and {self.std}")

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ClipPreprocess":
        """From a transformers preprocessor_config.json (CLIPImageProcessor)."""
        size, crop = cfg.get("size", 224), cfg.get("crop_size", 224)
        if isinstance(size, dict) and "shortest_edge" in size:
            mode, resize = "shortest", int(size["shortest_edge"])
        elif isinstance(size, dict):
            mode, resize = "squash", (int(size["height"]), int(size["width"]))
        else:
            mode, resize = "shortest", int(size)
        if not cfg.get("do_resize", True):
            raise ValueError("preprocessor config with do_resize=false is not supported (the model needs a fixed size)")
        crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else _pair(crop)
        if not cfg.get("do_center_crop", True):
            if mode != "squash":
                raise ValueError("preprocessor config without center crop needs size {height, width}")
            crop = resize
        interpolation = {2: "bilinear", 3: "bicubic"}.get(int(cfg.get("resample", 3)))
        if interpolation is None:
            raise ValueError(f"preprocessor resample {cfg.get('resample')} is not supported (2 bilinear, 3 bicubic)")
        mean = tuple(cfg.get("image_mean") or OPENAI_CLIP_MEAN) if cfg.get("do_normalize", True) else (0.0,) * 3
        std = tuple(cfg.get("image_std") or OPENAI_CLIP_STD) if cfg.get("do_normalize", True) else (1.0,) * 3
        return cls(
            size=_pair(crop),
            resize=resize,
            mode=mode,
            mean=mean,
            std=std,
            interpolation=interpolation,
            crop_rounding="floor",
        )

    @classmethod
    def from_open_clip_cfg(cls, cfg: dict) -> "ClipPreprocess":
        """From an open_clip preprocess cfg ({"size", "mean", "std", "interpolation", "resize_mode", "fill_color"})."""
        size = _pair(cfg.get("size", 224))
        mode = cfg.get("resize_mode") or "shortest"
        resize = size if mode == "squash" else size[0]
        if mode == "shortest" and size[0] != size[1]:
            raise ValueError(f"open_clip 'shortest' preprocessing needs a square size, got {size}")
        return cls(
            size=size,
            resize=resize,
            mode=mode,
            mean=tuple(cfg.get("mean") or OPENAI_CLIP_MEAN),
            std=tuple(cfg.get("std") or OPENAI_CLIP_STD),
            interpolation=cfg.get("interpolation") or "bicubic",
            crop_rounding="round",
            fill=float(cfg.get("fill_color", 0)) / 255.0,
        )

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """(h', w') after the resize, with each reference's integer rule."""
        if self.mode == "squash":
            return _pair(self.resize)
        if self.mode == "longest":  # open_clip ResizeKeepRatio(longest=1)
            ratio = max(h / self.size[0], w / self.size[1])
            return round(h / ratio), round(w / ratio)
        short, long = (w, h) if w <= h else (h, w)  # torchvision / transformers shortest edge
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_long, new_short) if w <= h else (new_short, new_long)

    def _offset(self, excess: int) -> int:
        return excess // 2 if self.crop_rounding == "floor" else int(round(excess / 2.0))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().permute(0, 3, 1, 2)  # (B, 3, H, W)
        rh, rw = self.resized_size(*x.shape[-2:])
        # PIL resizes width, then height, clipping to the pixel range after each pass (bicubic overshoots)
        for size in ((x.shape[-2], rw), (rh, rw)):
            if size != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True).clamp(
                    0, 1
                )
        ch, cw = self.size
        if rh < ch or rw < cw:  # center pad (open_clip's rule)
            ph, pw = max(ch - rh, 0), max(cw - rw, 0)
            x = F.pad(x, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2), value=self.fill)
            rh, rw = x.shape[-2:]
        top, left = self._offset(rh - ch), self._offset(rw - cw)
        x = x[..., top : top + ch, left : left + cw]  # (B, 3, h, w)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
