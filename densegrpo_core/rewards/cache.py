"""One copy of each reward model per process, keyed by (kind, resolved path, device, dtype); released on request."""

from __future__ import annotations

import gc
import threading
from typing import Callable

import torch

_MODELS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def cached_model(key: tuple, build: Callable[[], object]) -> object:
    """The model under `key`, built once (the lock keeps two threads from loading it twice)."""
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = build()
        return _MODELS[key]


def release_rewards() -> int:
    """Drop every cached reward model and empty the CUDA cache; → how many were dropped.

    Rewards already handed out keep their model alive until they are dropped too.
    """
    with _LOCK:
        n = len(_MODELS)
        _MODELS.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return n
