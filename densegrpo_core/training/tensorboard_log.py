"""TensorBoard logging (`logger = "tensorboard"`; optional dependency `tensorboard`): the scalars of every
metrics.jsonl line, each evaluation's rewards, the ΔR sign counts per step and the evaluation images, under
out_dir/tensorboard. Rank 0 only; metrics.jsonl stays the source of truth."""

from __future__ import annotations

import os

import torch

LOGGERS = ("none", "tensorboard")


def image_grid(images: torch.Tensor, ncol: int) -> torch.Tensor:
    """Images (N, H, W, 3) in [0, 1] → one (rows·(H+1)−1, ncol·(W+1)−1, 3) grid, white between images."""
    n, h, w, c = images.shape
    rows = -(-n // ncol)
    grid = torch.ones((rows * (h + 1) - 1, ncol * (w + 1) - 1, c))
    for i, image in enumerate(images.float().clamp(0, 1)):
        r, k = divmod(i, ncol)
        grid[r * (h + 1) : r * (h + 1) + h, k * (w + 1) : k * (w + 1) + w] = image
    return grid


class TensorBoardLog:
    """One SummaryWriter over out_dir/tensorboard; `iteration(m)`, `evaluation(ev, images)`, `close()`."""

    def __init__(self, out_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                f"logger = 'tensorboard' needs the tensorboard package (pip install tensorboard): {e}"
            ) from None
        self.dir = os.path.join(out_dir, "tensorboard")
        self.writer = SummaryWriter(self.dir)

    def iteration(self, m: dict) -> None:
        """Every number of the metrics line as train/<key>; per-step lists as <key>/step_<k>."""
        step = m["iteration"]
        for key, value in m.items():
            if key in ("iteration", "eval", "warnings"):
                continue
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, step)
            elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                for k, v in enumerate(value):
                    self.writer.add_scalar(f"{key}/step_{k}", v, step)
        self.writer.add_scalar("health/warnings", len(m.get("warnings", [])), step)

    def evaluation(self, ev: dict, images: torch.Tensor | None = None, ncol: int = 1) -> None:
        """eval/reward (the training reward) and eval/<name> of each held-out reward; the images (N, H, W, 3)
        in [0, 1] as one grid, `ncol` per row."""
        step = ev["iteration"]
        self.writer.add_scalar("eval/reward", ev["reward_mean"], step)
        for name, value in ev.get("eval_rewards", {}).items():
            self.writer.add_scalar(f"eval/{name}", value, step)
        if images is not None and len(images):
            self.writer.add_image("eval/samples", image_grid(images, ncol), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
