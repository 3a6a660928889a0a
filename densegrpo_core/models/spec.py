"""The model and data keys of a train TOML: which model, which prompts, what resolution.

They are not TrainConfig fields: the Trainer receives a built FlowPipeline and prompt lists (the toy, a ComfyUI
MODEL or a diffusers folder alike), so `cli.cmd_train` pops these keys (`ModelSpec.pop_from`) before
`TrainConfig.from_dict`, loads the pipeline with them and records them in the checkpoint's `model.json`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

from ..util.fields import Rule, check_fields

PROMPTS = Rule(what="a .txt file (one prompt a line) or a list of prompts")
SIDE = Rule(">= 1", what="a positive integer")
# what each field accepts beyond its annotated type (util/fields.py)
SPEC_RULES: dict[str, Rule] = {
    "model": Rule("non-empty", note="'toy' or a diffusers pipeline folder"),
    "transformer_file": Rule("non-empty"),
    "train_prompts": PROMPTS,
    "eval_prompts": PROMPTS,
    "resolution": SIDE,
    "height": SIDE,
    "width": SIDE,
    "guidance": Rule(">= 0"),
    "max_sequence_length": SIDE,
}


def check_model_path(model: str) -> None:
    """FileNotFoundError unless `model` is "toy" or a path that exists (before anything asks it for prompts)."""
    if model != "toy" and not os.path.exists(model):
        raise FileNotFoundError(
            f"model {model!r} does not exist: expected 'toy' or the path of a diffusers pipeline folder "
            f"(the folder with model_index.json)"
        )


def load_prompts(value: str | Sequence[str] | None, key: str = "prompts") -> list[str] | None:
    """Prompts from a .txt file (one prompt a line, blank lines skipped: Flow-GRPO's train.txt / test.txt) or a
    list of strings; None stays None. FileNotFoundError / ValueError naming `key` and the file."""
    if value is None:
        return None
    if isinstance(value, str):
        if not os.path.isfile(value):
            raise FileNotFoundError(f"{key}: prompts file {value!r} does not exist")
        with open(value, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
        if not prompts:
            raise ValueError(f"{key}: prompts file {value!r} holds no prompt")
        return prompts
    prompts = list(value)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"{key} must be a .txt file or a non-empty list of non-empty strings")
    return prompts


@dataclass
class ModelSpec:
    model: str = "toy"  # "toy" or a diffusers pipeline folder (model_index.json decides the family)
    transformer_file: str | None = None  # single-file transformer checkpoint replacing the folder's transformer
    train_prompts: str | list | None = None  # .txt file (one prompt a line) or a list; None = the toy's own
    eval_prompts: str | list | None = None  # held-out prompts for the ODE evaluation; None = toy's own / none
    resolution: int | None = None  # square images of this many pixels a side (or height and width)
    height: int | None = None  # image height in pixels; None = resolution, else the model's default
    width: int | None = None  # image width in pixels
    negative_prompt: str = ""  # SD3: the prompt of CFG's unconditional pass
    guidance: float = 3.5  # FLUX.1-dev: the guidance embedding value (diffusers' default)
    max_sequence_length: int | None = None  # T5 tokens per prompt; None = 128 for SD3 (Flow-GRPO), 512 for FLUX

    def __post_init__(self):
        check_fields(self, SPEC_RULES)
        if self.resolution is not None and (self.height is not None or self.width is not None):
            raise ValueError("give either resolution (square) or height and width, not both")
        if (self.height is None) != (self.width is None):
            raise ValueError("height and width go together (or use resolution for square images)")
        if self.model == "toy":
            extra = [k for k in ("transformer_file", "resolution", "height") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} apply to diffusers models, not the toy model")
        elif self.train_prompts is None:
            raise ValueError(f"model {self.model!r} needs train_prompts (a .txt file, one prompt a line, or a list)")

    @classmethod
    def pop_from(cls, raw: dict, check_path: bool = False) -> "ModelSpec":
        """The spec from a TOML dict, removing its keys from `raw` (what remains is TrainConfig's); with
        `check_path`, a model path that does not exist is the first error (`check_model_path`)."""
        if check_path and isinstance(raw.get("model"), str):
            check_model_path(raw["model"])
        return cls(**{f.name: raw.pop(f.name) for f in dataclasses.fields(cls) if f.name in raw})

    def loader_options(self, dtype: str) -> dict:
        """Keyword options of `pipeline.load_pipeline` (none for the toy)."""
        if self.model == "toy":
            return {}
        side = (self.resolution, self.resolution) if self.resolution else (self.height, self.width)
        opts = {
            "height": side[0],
            "width": side[1],
            "dtype": dtype,
            "transformer_file": self.transformer_file,
            "negative_prompt": self.negative_prompt,
            "guidance": self.guidance,
            "max_sequence_length": self.max_sequence_length,
        }
        return {k: v for k, v in opts.items() if v is not None}

    def load(self, device, dtype: str = "float32"):
        """(FlowPipeline, train prompts, eval prompts)."""
        from .pipeline import load_pipeline

        return load_pipeline(
            self.model,
            device,
            train_prompts=load_prompts(self.train_prompts, "train_prompts"),
            eval_prompts=load_prompts(self.eval_prompts, "eval_prompts"),
            **self.loader_options(dtype),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
