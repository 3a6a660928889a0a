"""The embedded toy text-to-image flow model: coloured shapes at 16x16, small enough to fine-tune on a CPU.

`load_toy()` returns everything the trainer needs (model, prompt encoder, null prompt, decoder, reward,
prompt split and recommended sampling settings) from the shipped weights `weights/toy_dit.safetensors`,
made by `python -m densegrpo_core.models.toy.pretrain`.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Callable

import torch
from safetensors import safe_open

from .model import WEIGHTS_FORMAT, ToyDiT, ToyDiTConfig, encode_prompts, null_cond
from .reward import toy_reward
from .task import LATENT_SHAPE, decode, eval_prompts, train_prompts

DEFAULT_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "toy_dit.safetensors")


@dataclass
class ToyBundle:
    model: ToyDiT  # velocity model, eval mode, float32
    encode: Callable[[list[str]], torch.Tensor]  # prompts → token ids (B, L) on the model's device
    null_cond: Callable[[int], torch.Tensor]  # batch size → null-prompt ids (B, L), for CFG
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents (B, 3, H, W) → images (B, H, W, 3) in [0, 1]
    reward: Callable[[torch.Tensor, list[str]], torch.Tensor]  # toy_reward: (images, prompts) → (B,) float32
    latent_shape: tuple[int, int, int]  # (C, H, W) of one latent
    train_prompts: list[str]  # prompts pretraining used; RL trains on these
    eval_prompts: list[str]  # held-out combinations for evaluation
    shift: float  # recommended grid shift for T = 10 sampling
    cfg_scale: float  # recommended classifier-free guidance scale
    meta: dict  # weights metadata (config, steps, seed, rewards)


def load_toy_model(path: str | None = None, device: torch.device | str = "cpu") -> tuple[ToyDiT, dict]:
    """The pretrained ToyDiT (float32, eval mode) and its metadata; every key and shape must match the config."""
    path = path or DEFAULT_WEIGHTS
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"toy weights not found at {path!r}; create them with "
            f"`python -m densegrpo_core.models.toy.pretrain --out {path}`"
        )
    with safe_open(path, framework="pt") as f:
        meta = {k: v if k == "format" else json.loads(v) for k, v in (f.metadata() or {}).items()}
        if meta.get("format") != WEIGHTS_FORMAT:
            raise ValueError(
                f"{path!r} is not a toy model file: metadata format is {meta.get('format')!r}, "
                f"expected {WEIGHTS_FORMAT!r}"
            )
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    model = ToyDiT(ToyDiTConfig(**meta["config"]))
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{path!r} does not match ToyDiT: missing keys {missing}, unexpected keys {unexpected}")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ValueError(f"{path!r}: {k} has shape {tuple(state[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def load_toy(device: torch.device | str = "cpu", path: str | None = None) -> ToyBundle:
    """Load the shipped (or a given) toy model with its task, reward and sampling settings."""
    model, meta = load_toy_model(path, device)
    return ToyBundle(
        model=model,
        encode=functools.partial(encode_prompts, device=device),
        null_cond=functools.partial(null_cond, device=device),
        decode=decode,
        reward=toy_reward,
        latent_shape=LATENT_SHAPE,
        train_prompts=train_prompts(),
        eval_prompts=eval_prompts(),
        shift=float(meta["shift"]),
        cfg_scale=float(meta["cfg_scale"]),
        meta=meta,
    )
