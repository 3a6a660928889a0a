"""A transformers CLIP model from a local folder (the Hugging Face checkpoint layout), shared by PickScore,
CLIPScore and the aesthetic predictor.

A CLIP folder holds `config.json` (model_type "clip") and `model.safetensors` (or `pytorch_model.bin`,
weights-only); its processor files (`preprocessor_config.json` and `tokenizer.json` or `vocab.json` +
`merges.txt`) sit in the same folder or in the extra folders a caller names (PickScore: `processor/`).
Loading passes `local_files_only=True`: nothing is downloaded.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .cache import cached_model
from .clip_preprocess import ClipPreprocess
from .model_files import comfy_hint, find_file

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
CLIP_FILES_TEXT = (
    "config.json, model.safetensors (or pytorch_model.bin), preprocessor_config.json and "
    "tokenizer.json (or vocab.json + merges.txt)"
)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def _read_preprocess(path: Path) -> ClipPreprocess:
    cfg = json.loads(path.read_text())
    if path.name == "processor_config.json":  # transformers >= 5 nests the image processor
        cfg = cfg.get("image_processor", {})
    try:
        return ClipPreprocess.from_hf_config(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: unusable image preprocessing config: {e}") from None


@dataclass(frozen=True)
class ClipFolder:
    """Where the files of one CLIP checkpoint are."""

    model_dir: Path  # config.json + weights
    processor_dir: Path  # preprocessor config (+ tokenizer, when text is needed)

    @classmethod
    def find(
        cls, folder: Path, reward: str, comfy_folder: str, need_text: bool, processor_dirs: Sequence[str] = ()
    ) -> "ClipFolder":
        """Validate a CLIP folder; FileNotFoundError/ValueError saying exactly what is missing and where it goes."""
        where = f"(put them in {comfy_hint(comfy_folder)})"
        if not folder.is_dir():
            raise FileNotFoundError(
                f"reward {reward!r}: {folder} is not a folder; expected a folder with {CLIP_FILES_TEXT} {where}"
            )
        config = folder / "config.json"
        if not config.is_file():
            raise FileNotFoundError(
                f"reward {reward!r}: no config.json in {folder}; expected a transformers CLIP "
                f"folder with {CLIP_FILES_TEXT} {where}"
            )
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except json.JSONDecodeError as e:
            raise ValueError(f"reward {reward!r}: {config} is not valid JSON: {e}") from None
        if model_type != "clip":
            raise ValueError(
                f"reward {reward!r}: {config} describes a {model_type!r} model; expected a CLIP "
                f"checkpoint (model_type 'clip')"
            )
        if find_file(folder, WEIGHT_FILES) is None:
            raise FileNotFoundError(
                f"reward {reward!r}: no weights in {folder}; expected one of {', '.join(WEIGHT_FILES)} {where}"
            )
        candidates = [folder] + [folder / d for d in processor_dirs]
        for d in candidates:
            if find_file(d, PREPROCESSOR_FILES) is not None and (_has_tokenizer(d) or not need_text):
                return cls(folder, d)
        needed = "preprocessor_config.json" + (" and tokenizer.json (or vocab.json + merges.txt)" if need_text else "")
        looked = " or ".join(str(d) for d in candidates)
        raise FileNotFoundError(f"reward {reward!r}: no processor files in {looked}; expected {needed} {where}")


@dataclass(eq=False)
class HFClip:
    """A loaded CLIPModel with its torch preprocessing and (lazily) its tokenizer."""

    model: torch.nn.Module
    files: ClipFolder
    preprocess: ClipPreprocess
    device: torch.device
    dtype: torch.dtype
    _tokenizer: object = field(default=None, repr=False)

    @property
    def projection_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.float().exp()

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import CLIPTokenizer

            if not _has_tokenizer(self.files.processor_dir):
                raise FileNotFoundError(f"no tokenizer.json (or vocab.json + merges.txt) in {self.files.processor_dir}")
            self._tokenizer = CLIPTokenizer.from_pretrained(str(self.files.processor_dir), local_files_only=True)
        return self._tokenizer

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (b, H, W, 3) in [0, 1] on self.device → projected embeddings (b, D) float32, not normalised."""
        pixels = self.preprocess(images).to(self.dtype)  # (b, 3, h, w)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output  # (b, width)
        return self.model.visual_projection(pooled).float()

    def encode_texts(self, prompts: Sequence[str], batch_size: int) -> torch.Tensor:
        """Prompts → projected embeddings (n, D) float32, not normalised; padded to the full context length so a
        prompt's embedding does not depend on the batch it is in."""
        tok = self.tokenizer()
        max_len = int(self.model.config.text_config.max_position_embeddings)
        out = []
        for i in range(0, len(prompts), batch_size):
            enc = tok(
                list(prompts[i : i + batch_size]),
                padding="max_length",
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            pooled = self.model.text_model(
                input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
            ).pooler_output
            out.append(self.model.text_projection(pooled).float())
        return torch.cat(out)


def encode_unique_texts(clip: HFClip, prompts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Text embeddings (b, D) for prompts with repeats (a GRPO group shares one prompt), each encoded once."""
    unique = list(dict.fromkeys(prompts))
    emb = clip.encode_texts(unique, batch_size)  # (u, D)
    index = torch.tensor([unique.index(p) for p in prompts], device=emb.device)
    return emb[index]


def load_hf_clip(
    folder,
    reward: str,
    comfy_folder: str,
    device: torch.device,
    dtype: torch.dtype,
    need_text: bool = True,
    processor_dirs: Sequence[str] = (),
) -> HFClip:
    """The CLIP model in `folder`, loaded once per (folder, device, dtype) and process."""
    files = ClipFolder.find(Path(folder).expanduser(), reward, comfy_folder, need_text, processor_dirs)
    preprocess = _read_preprocess(find_file(files.processor_dir, PREPROCESSOR_FILES))

    def build() -> HFClip:
        from transformers import CLIPModel

        try:
            model = CLIPModel.from_pretrained(str(files.model_dir), local_files_only=True)
        except (pickle.UnpicklingError, OSError, RuntimeError, ValueError) as e:
            text = str(e)
            if isinstance(e, pickle.UnpicklingError) or "weights_only" in text.lower() or "unpickl" in text.lower():
                raise ValueError(
                    f"reward {reward!r}: the weights in {files.model_dir} are a pickle that is not "
                    f"weights-only, so they are not loaded; convert them to model.safetensors"
                ) from None
            raise ValueError(
                f"reward {reward!r}: cannot load the CLIP model in {files.model_dir}: "
                f"{text.splitlines()[0] if text else type(e).__name__}"
            ) from None
        return HFClip(
            model.to(device=device, dtype=dtype).eval().requires_grad_(False), files, preprocess, device, dtype
        )

    key = ("hf_clip", str(files.model_dir.resolve()), str(files.processor_dir.resolve()), str(device), str(dtype))
    return cached_model(key, build)
