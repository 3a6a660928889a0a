"""The toy text-to-image task: a coloured shape on a plain background, 16x16 RGB.

A prompt reads "a {colour} {shape} on a {background} background". The latent of the toy model is the image
itself, (3, 16, 16) in [-1, 1], so `decode` is a rescale. Held-out colour/shape/background combinations
(`eval_prompts`) measure whether fine-tuning generalises beyond the training prompts.
"""

from __future__ import annotations

import re

import torch

IMAGE_SIZE = 16
LATENT_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)

SHAPE_COLOURS = {  # RGB in [0, 1]
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
}
BACKGROUNDS = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (0.5, 0.5, 0.5),
    "blue": (0.0, 0.0, 1.0),
}
SHAPES = ("circle", "square", "triangle")
WORDS = ("a", "on", "background", *SHAPE_COLOURS, *SHAPES, *(b for b in BACKGROUNDS if b not in SHAPE_COLOURS))

SUPERSAMPLE = 4  # sub-pixels per pixel side for anti-aliased coverage
CIRCLE_RADIUS = 4.5  # pixels, at size scale 1
SQUARE_HALF_SIDE = 4.0
TRIANGLE_APEX = -5.0  # y of the apex (image y points down), base at TRIANGLE_BASE
TRIANGLE_BASE = 4.0
TRIANGLE_HALF_BASE = 5.5
JITTER_OFFSET = 1.0  # centre offset ~ U[-1, 1] pixels in x and y
JITTER_SCALE = (0.85, 1.15)  # size scale ~ U[0.85, 1.15]

_PROMPT = re.compile(r"a (\w+) (\w+) on a (\w+) background")


def make_prompt(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def all_prompts() -> list[str]:
    """Every valid prompt, in a fixed order (colour, shape, background); a shape never matches its background."""
    return [make_prompt(c, s, b) for c in SHAPE_COLOURS for s in SHAPES for b in BACKGROUNDS if b != c]


def _is_held_out(colour: str, shape: str, background: str) -> bool:
    # One colour per (shape, background) pair, each colour twice, never twice with the same shape or the same
    # background: every held-out combination has its colour·shape and colour·background pairs in training.
    ci, si, bi = list(SHAPE_COLOURS).index(colour), SHAPES.index(shape), list(BACKGROUNDS).index(background)
    return ci == (bi + 4 * si) % len(SHAPE_COLOURS)


def train_prompts() -> list[str]:
    """The prompts pretraining and RL fine-tuning may see (the complement of `eval_prompts`)."""
    return [p for p in all_prompts() if not _is_held_out(*parse_prompt(p))]


def eval_prompts() -> list[str]:
    """Held-out combinations (~16% of all prompts), never used for training."""
    return [p for p in all_prompts() if _is_held_out(*parse_prompt(p))]


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """ "a red circle on a white background" → ("red", "circle", "white"); ValueError for anything else."""
    m = _PROMPT.fullmatch(prompt.strip().lower()) if isinstance(prompt, str) else None
    if m is None or m[1] not in SHAPE_COLOURS or m[2] not in SHAPES or m[3] not in BACKGROUNDS or m[1] == m[3]:
        raise ValueError(
            f"invalid toy prompt {prompt!r}; expected 'a <colour> <shape> on a <background> "
            f"background' with colour in {list(SHAPE_COLOURS)}, shape in {list(SHAPES)}, "
            f"background in {list(BACKGROUNDS)} (different from the colour)"
        )
    return m[1], m[2], m[3]


def prompt_colours(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape and background RGB of each prompt: two (B, 3) float32 tensors in [0, 1]."""
    parsed = [parse_prompt(p) for p in prompts]
    shape_rgb = torch.tensor([SHAPE_COLOURS[c] for c, _, _ in parsed], dtype=torch.float32)  # (B, 3)
    bg_rgb = torch.tensor([BACKGROUNDS[b] for _, _, b in parsed], dtype=torch.float32)  # (B, 3)
    return shape_rgb, bg_rgb


def shape_coverage(
    shape: str, dx: torch.Tensor, dy: torch.Tensor, scale: torch.Tensor, size: int = IMAGE_SIZE
) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of one shape kind at N centre offsets / size scales: → (N, size, size)."""
    ss = SUPERSAMPLE
    c = (torch.arange(size * ss, dtype=torch.float32) + 0.5) / ss - size / 2  # sub-pixel centres, image centre 0
    x = c.view(1, 1, -1) - dx.view(-1, 1, 1)  # (N, 1, S)
    y = c.view(1, -1, 1) - dy.view(-1, 1, 1)  # (N, S, 1)
    s = scale.view(-1, 1, 1)
    if shape == "circle":
        inside = x**2 + y**2 <= (CIRCLE_RADIUS * s) ** 2
    elif shape == "square":
        inside = (x.abs() <= SQUARE_HALF_SIDE * s) & (y.abs() <= SQUARE_HALF_SIDE * s)
    elif shape == "triangle":
        top, bottom = TRIANGLE_APEX * s, TRIANGLE_BASE * s
        half_width = TRIANGLE_HALF_BASE * s * (y - top) / (bottom - top)
        inside = (y >= top) & (y <= bottom) & (x.abs() <= half_width)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    inside = inside.float()  # (N, S, S)
    return torch.nn.functional.avg_pool2d(inside.unsqueeze(1), ss).squeeze(1)  # (N, size, size)


def render(prompts: list[str], generator: torch.Generator | None = None) -> torch.Tensor:
    """Ground-truth images for prompts, with random size/position jitter: → (B, 3, 16, 16) in [-1, 1]."""
    B = len(prompts)
    shapes = [parse_prompt(p)[1] for p in prompts]
    shape_rgb, bg_rgb = prompt_colours(prompts)  # (B, 3) each
    jitter = torch.rand(B, 3, generator=generator)  # (B, 3) in [0, 1)
    dx, dy = (2 * jitter[:, 0] - 1) * JITTER_OFFSET, (2 * jitter[:, 1] - 1) * JITTER_OFFSET
    lo, hi = JITTER_SCALE
    scale = lo + (hi - lo) * jitter[:, 2]
    cover = torch.empty(B, IMAGE_SIZE, IMAGE_SIZE)  # (B, H, W)
    for kind in SHAPES:
        rows = torch.tensor([i for i, s in enumerate(shapes) if s == kind], dtype=torch.long)
        if rows.numel():
            cover[rows] = shape_coverage(kind, dx[rows], dy[rows], scale[rows])
    a = cover.unsqueeze(1)  # (B, 1, H, W)
    img = a * shape_rgb.view(B, 3, 1, 1) + (1 - a) * bg_rgb.view(B, 3, 1, 1)  # (B, 3, H, W) in [0, 1]
    return img * 2 - 1


def decode(latents: torch.Tensor) -> torch.Tensor:
    """Toy latents (B, 3, H, W) in ~[-1, 1] → images (B, H, W, 3) in [0, 1]."""
    return ((latents.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
