"""Finding and reading reward model files on disk: precise errors, weights only.

Weights are read from safetensors or with `torch.load(weights_only=True)`; a pickle that needs more than
tensors is refused. Nothing here reaches the network.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterable

import torch

COMFY_FOLDER = "reward_models"  # ComfyUI model folder: models/reward_models/<reward folder>/


def comfy_hint(folder: str) -> str:
    """Where a ComfyUI user puts a reward's files."""
    return f"ComfyUI/models/{COMFY_FOLDER}/{folder}/"


def require_path(path, reward: str, folder: str, expected: str) -> Path:
    """The path as a Path; FileNotFoundError naming what was expected and where it goes when it is absent."""
    if path is None or str(path).strip() == "":
        raise ValueError(
            f"reward {reward!r} needs its model files: pass a path to {expected} (e.g. {comfy_hint(folder)})"
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"reward {reward!r}: {p} does not exist; expected {expected} (put them in {comfy_hint(folder)})"
        )
    return p


def find_file(folder: Path, names: Iterable[str]) -> Path | None:
    """The first of `names` (file names or glob patterns) present in `folder`."""
    for name in names:
        hits = sorted(folder.glob(name))
        if hits:
            return hits[0]
    return None


def load_weights(path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a weights-only torch pickle (unwrapping {"state_dict": ...})."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{path} is a pickle that is not weights-only (it holds objects other than "
                f"tensors), so it is not loaded; convert it to .safetensors. ({str(e).splitlines()[0]})"
            ) from None
        except (RuntimeError, EOFError) as e:
            raise ValueError(f"{path} is not a readable torch weights file: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], path, what: str) -> None:
    """Load `state` into `module`, every key and shape matching; ValueError listing the first mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{name} {items[:4]}{' …' if len(items) > 4 else ''}"
            for name, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if items
        ]
        raise ValueError(f"{path} does not match the {what}: {'; '.join(parts)}")
    module.load_state_dict(state)
