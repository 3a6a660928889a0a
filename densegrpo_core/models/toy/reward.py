"""The toy reward: how well an image shows "a {colour} {shape} on a {background} background".

Everything is soft so that a small change of the image gives a small change of the reward (dense rewards
compare the rewards of nearby latents, docs/method.md §5):

    m_shape(p) = exp(-|img(p) - rgb(colour)|² / w²)           soft mask of the requested shape colour
    m_bg(p)    = exp(-|img(p) - rgb(background)|² / w²)       soft mask of the background colour
    iou_k      = Σ min(m_shape, T_k) / Σ max(m_shape, T_k)     soft IoU with template T_k
    fit(s)     = max over the templates of shape kind s of iou_k   (templates: sizes × offsets of the renders)
    shape      = fit(requested) - 2·relu(max over other kinds of fit - fit(requested))
    background = mean of m_bg over the pixels that no template of the requested kind touches
    reward     = 0.65·clamp(shape, 0) + 0.35·background   ∈ [0, 1]

A flat image of the shape colour fits no template well, a flat background has no shape, and one fixed
image matches only the few prompts that share its colours, so none of them reaches a correct render.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F

from ..protocols import check_reward_inputs
from .task import IMAGE_SIZE, JITTER_OFFSET, JITTER_SCALE, SHAPES, parse_prompt, prompt_colours, shape_coverage

COLOUR_WIDTH = 0.4  # w: colour distance at which a pixel counts exp(-1) ≈ 0.37 as matching
SHAPE_WEIGHT = 0.65  # weight of the shape term; the background term gets the rest
WRONG_SHAPE_PENALTY = 2.0  # cost per unit by which another shape kind fits better (circle vs square IoU is ~0.8)
TEMPLATE_OFFSETS = 5  # template centre offsets per axis, evenly over the render jitter
TEMPLATE_SCALES = 3  # template sizes, evenly over the render jitter
CHUNK = 128  # images per batch of template comparisons (bounds memory)


@functools.lru_cache(maxsize=None)
def shape_templates() -> torch.Tensor:
    """Coverage templates of every shape kind at every template offset and size: → (S, K, 16, 16)."""
    offsets = torch.linspace(-JITTER_OFFSET, JITTER_OFFSET, TEMPLATE_OFFSETS)
    scales = torch.linspace(*JITTER_SCALE, TEMPLATE_SCALES)
    dx, dy, sc = torch.meshgrid(offsets, offsets, scales, indexing="ij")
    return torch.stack([shape_coverage(kind, dx.flatten(), dy.flatten(), sc.flatten()) for kind in SHAPES])


def soft_iou(mask: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """Σ min / Σ max of masks (B, P) against templates (K, P): → (B, K)."""
    l1 = (mask.unsqueeze(1) - templates.unsqueeze(0)).abs().sum(-1)  # (B, K)
    total = mask.sum(-1, keepdim=True) + templates.sum(-1).unsqueeze(0)  # (B, K)
    inter = (total - l1) / 2  # Σ min(a, b) = (Σa + Σb - Σ|a-b|)/2
    return inter / (total - inter)  # Σ max = Σa + Σb - Σ min


def toy_reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Prompt fidelity of decoded images (B, H, W, 3) in [0, 1]: → (B,) float32 in [0, 1], deterministic."""
    check_reward_inputs(images, prompts)
    x = images.float().permute(0, 3, 1, 2)  # (B, 3, H, W)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")
    B = x.shape[0]
    shape_rgb, bg_rgb = (c.to(x.device) for c in prompt_colours(list(prompts)))  # (B, 3) each; checks prompts
    kinds = torch.tensor([SHAPES.index(parse_prompt(p)[1]) for p in prompts], device=x.device)  # (B,)
    templates = shape_templates().to(x.device).flatten(-2)  # (S, K, P)
    S, K, P = templates.shape

    def colour_mask(rgb):  # (B, 3) → (B, P)
        return torch.exp(-((x - rgb.view(B, 3, 1, 1)) ** 2).sum(1) / COLOUR_WIDTH**2).flatten(1)

    m_shape, m_bg = colour_mask(shape_rgb), colour_mask(bg_rgb)  # (B, P) each
    fit = torch.cat(
        [soft_iou(m_shape[i : i + CHUNK], templates.flatten(0, 1)).view(-1, S, K).amax(-1) for i in range(0, B, CHUNK)]
    )  # (B, S)
    own = fit.gather(1, kinds[:, None]).squeeze(1)  # (B,)
    other = fit.masked_fill(F.one_hot(kinds, S).bool(), float("-inf")).amax(1)  # (B,)
    shape = (own - WRONG_SHAPE_PENALTY * F.relu(other - own)).clamp(min=0)  # (B,)
    outside = 1 - templates.amax(1)[kinds]  # (B, P) pixels no template touches
    background = (m_bg * outside).sum(1) / outside.sum(1)  # (B,)
    return (SHAPE_WEIGHT * shape + (1 - SHAPE_WEIGHT) * background).float()
