"""The reward registry: every built-in reward with what it needs on disk, and `get_reward` to build any of
them, a `module:function` callable, or a weighted sum of several.

Loaders take `(path, device, dtype, batch_size)`; model weights come only from local files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .base import DEFAULT_BATCH_SIZE, CallableReward, load_callable
from .combine import WeightedReward


@dataclass(frozen=True)
class RewardSpec:
    name: str  # what `get_reward`, the CLI and TOML configs call it
    display_name: str
    description: str
    formula: str  # the score, as computed
    needs_path: bool  # needs model files
    path_kind: str  # "folder", "file_or_folder" or "none"
    expected_files: tuple[str, ...]  # what the path must hold ("a | b": either)
    folder: str | None  # default folder under ComfyUI's models/reward_models/
    upstream: str  # where the files come from (project and checkpoint names)
    loader: Callable  # loader(path, device=, dtype=, batch_size=) → reward

    def load(self, path=None, device=None, dtype=None, batch_size: int = DEFAULT_BATCH_SIZE):
        if not self.needs_path and path is not None:
            raise ValueError(f"reward {self.name!r} takes no model files, got path {str(path)!r}")
        return self.loader(path, device=device, dtype=dtype, batch_size=batch_size)


def _toy(path, device=None, dtype=None, batch_size=None):
    from ..models.toy.reward import toy_reward

    return CallableReward(toy_reward, "toy")


def _pickscore(path, **kw):
    from .pickscore import load_pickscore

    return load_pickscore(path, **kw)


def _pickscore_flowgrpo(path, **kw):
    from .pickscore import load_pickscore

    return load_pickscore(path, flow_grpo_scale=True, **kw)


def _hpsv2(path, **kw):
    from .hpsv2 import load_hpsv2

    return load_hpsv2(path, **kw)


def _aesthetic(path, **kw):
    from .aesthetic import load_aesthetic

    return load_aesthetic(path, **kw)


def _clipscore(path, **kw):
    from .clipscore import load_clipscore

    return load_clipscore(path, **kw)


def _jpeg(sign: float, name: str):
    def load(path, **kw):
        from .jpeg import JpegReward

        return JpegReward(sign, name)

    return load


_CLIP_FILES = (
    "config.json",
    "model.safetensors | pytorch_model.bin",
    "preprocessor_config.json",
    "tokenizer.json | vocab.json + merges.txt",
)
_PICKSCORE = dict(
    needs_path=True,
    path_kind="folder",
    folder="pickscore",
    expected_files=(
        "config.json",
        "model.safetensors | pytorch_model.bin",
        "preprocessor_config.json (here or in processor/)",
        "tokenizer.json | vocab.json + merges.txt (here or in processor/)",
    ),
    upstream="model: yuvalkirstain/PickScore_v1; processor/tokenizer: "
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K (Hugging Face checkpoints)",
)

REWARD_REGISTRY: dict[str, RewardSpec] = {
    s.name: s
    for s in (
        RewardSpec(
            "pickscore",
            "PickScore",
            "Human preference (Pick-a-Pic), CLIP ViT-H/14; ~21-23 for real images",
            "exp(logit_scale) * cos(image_emb, text_emb)",
            loader=_pickscore,
            **_PICKSCORE,
        ),
        RewardSpec(
            "pickscore_flowgrpo",
            "PickScore / 26 (Flow-GRPO)",
            "PickScore scaled by 1/26 as Flow-GRPO trains it",
            "exp(logit_scale) * cos(image_emb, text_emb) / 26",
            loader=_pickscore_flowgrpo,
            **_PICKSCORE,
        ),
        RewardSpec(
            "hpsv2",
            "HPSv2 / HPSv2.1",
            "Human Preference Score v2 (HPD v2), open_clip ViT-H-14; ~0.25-0.30",
            "cos(image_emb, text_emb)",
            needs_path=True,
            path_kind="file_or_folder",
            folder="hpsv2",
            expected_files=(
                "HPS_v2.1_compressed.pt | HPS_v2_compressed.pt | HPS_v2*.safetensors",
                "open_clip_config.json (optional: replaces the ViT-H-14 architecture)",
            ),
            upstream="tgxs002/HPSv2 checkpoints (xswu/HPSv2 on Hugging Face)",
            loader=_hpsv2,
        ),
        RewardSpec(
            "aesthetic",
            "LAION aesthetic v2",
            "LAION improved aesthetic predictor on CLIP ViT-L/14; ~1-10",
            "MLP(image_emb / |image_emb|)",
            needs_path=True,
            path_kind="file_or_folder",
            folder="aesthetic",
            expected_files=(
                "sac+logos+ava1-l14-linearMSE.pth | .safetensors",
                "CLIP ViT-L/14 (here or in clip/): config.json, model.safetensors | pytorch_model.bin, "
                "preprocessor_config.json",
            ),
            upstream="christophschuhmann/improved-aesthetic-predictor head; openai/clip-vit-large-patch14",
            loader=_aesthetic,
        ),
        RewardSpec(
            "clipscore",
            "CLIPScore",
            "Reference-free image-text alignment (Hessel et al. 2021), any CLIP",
            "2.5 * max(cos(image_emb, text_emb), 0)",
            needs_path=True,
            path_kind="folder",
            folder="clipscore",
            expected_files=_CLIP_FILES,
            upstream="any transformers CLIP, e.g. openai/clip-vit-large-patch14",
            loader=_clipscore,
        ),
        RewardSpec(
            "jpeg_compressibility",
            "JPEG compressibility",
            "DDPO: smaller JPEG files score higher",
            "-(JPEG quality-95 size in kB)",
            needs_path=False,
            path_kind="none",
            expected_files=(),
            folder=None,
            upstream="none (PIL)",
            loader=_jpeg(-1.0, "jpeg_compressibility"),
        ),
        RewardSpec(
            "jpeg_incompressibility",
            "JPEG incompressibility",
            "DDPO: larger JPEG files score higher",
            "+(JPEG quality-95 size in kB)",
            needs_path=False,
            path_kind="none",
            expected_files=(),
            folder=None,
            upstream="none (PIL)",
            loader=_jpeg(1.0, "jpeg_incompressibility"),
        ),
        RewardSpec(
            "toy",
            "Toy task",
            "Prompt fidelity on the embedded toy task (16x16 shapes); in [0, 1]",
            "0.65 * shape IoU term + 0.35 * background term",
            needs_path=False,
            path_kind="none",
            expected_files=(),
            folder=None,
            upstream="shipped",
            loader=_toy,
        ),
    )
}


def list_rewards() -> list[RewardSpec]:
    return list(REWARD_REGISTRY.values())


def parse_reward_spec(spec) -> dict[str, float] | str:
    """A reward name / `module:function` as is, or the terms {name: weight} of a dict or "a=1.0,b=0.5"."""
    if isinstance(spec, dict):
        terms = dict(spec)
    elif isinstance(spec, str) and ("," in spec or "=" in spec):
        terms = {}
        for item in (s.strip() for s in spec.split(",")):
            name, _, weight = item.partition("=")
            if not name.strip():
                raise ValueError(f"reward {spec!r}: empty term; expected 'name=weight,name=weight'")
            terms[name.strip()] = weight.strip() if weight.strip() else 1.0
    elif isinstance(spec, str) and spec.strip():
        return spec.strip()
    else:
        raise ValueError(f"reward must be a name, 'module:function', 'name=weight,…' or {{name: weight}}, got {spec!r}")
    if not terms:
        raise ValueError("a weighted reward needs at least one term")
    out = {}
    for name, weight in terms.items():
        try:
            out[str(name)] = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"reward {spec!r}: weight of {name!r} must be a number, got {weight!r}") from None
        if not math.isfinite(out[str(name)]):
            raise ValueError(f"reward {spec!r}: weight of {name!r} must be finite, got {weight!r}")
    return out


def parse_reward_paths(text: str | None) -> str | dict[str, str] | None:
    """`--reward-path` text: one path, or "name=path,name=path" for the terms of a weighted reward."""
    if text is None or "=" not in text:
        return text
    items = [item.partition("=") for item in text.split(",")]
    if all(sep and (key.strip() in REWARD_REGISTRY or ":" in key) for key, sep, _ in items):
        return {key.strip(): value.strip() for key, _, value in items}
    return text


def _single(name: str, path, device, dtype, batch_size):
    if name in REWARD_REGISTRY:
        return REWARD_REGISTRY[name].load(path, device=device, dtype=dtype, batch_size=batch_size)
    if ":" in name:
        if path is not None:
            raise ValueError(f"custom reward {name!r} takes no path, got {str(path)!r}")
        return CallableReward(load_callable(name), name)
    raise ValueError(
        f"unknown reward {name!r}; expected one of {', '.join(REWARD_REGISTRY)} or a 'module:function' callable"
    )


def _term_paths(terms: dict[str, float], path) -> dict[str, object]:
    """The path of each term: from {name: path}, or one path for the single term that needs files."""
    if path is None:
        return {}
    if isinstance(path, dict):
        unknown = sorted(set(path) - set(terms))
        if unknown:
            raise ValueError(f"reward paths for {unknown}, which are not terms of the reward ({', '.join(terms)})")
        return dict(path)
    needing = [n for n in terms if n in REWARD_REGISTRY and REWARD_REGISTRY[n].needs_path]
    if len(needing) != 1:
        raise ValueError(
            f"one reward path for the terms {', '.join(terms)}, of which {len(needing)} need files; "
            f"give the paths as {{name: path}} (CLI: --reward-path name=PATH,name=PATH)"
        )
    return {needing[0]: path}


def get_reward(spec="toy", path=None, device=None, dtype=None, batch_size: int = DEFAULT_BATCH_SIZE):
    """A reward `(images (B, H, W, 3) in [0, 1], prompts) → (B,) float32` on the images' device.

    spec: a registered name (see `list_rewards()`), "package.module:function", or a weighted sum as
          {name: weight} or "pickscore=1.0,aesthetic=0.5" (the result has `last_terms` after each call).
    path: the model file/folder, or {name: path} for the terms of a weighted sum.
    device / dtype: where and how the model runs (default: CUDA if available, float16 there, float32 on CPU).
    batch_size: most images per model forward pass.
    """
    parsed = parse_reward_spec(spec)
    if isinstance(parsed, str):
        if isinstance(path, dict):
            others = sorted(set(path) - {parsed})
            if others:
                raise ValueError(f"reward paths for {others}, which are not the reward {parsed!r}")
            path = path.get(parsed)
        return _single(parsed, path, device, dtype, batch_size)
    paths = _term_paths(parsed, path)
    return WeightedReward(
        {name: (w, _single(name, paths.get(name), device, dtype, batch_size)) for name, w in parsed.items()}
    )
