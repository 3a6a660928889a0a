"""Refitting the estimator's constants to benchmark records (`python -m densegrpo_core bench --fit-constants`).

Each constant of `resources.estimate.Constants` is a least-squares slope through the origin over the records that
measure it; the workload of a record is computed by the estimator itself (`resources.estimate.workload`), so a
refit and a prediction use the same batch arithmetic.
"""

from __future__ import annotations

import dataclasses

import torch

from ...resources.estimate import Constants, ModelInfo, workload
from ...training.config import TrainConfig


def _through_origin(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of y = a·x."""
    sxx = sum(x * x for x in xs)
    return sum(x * y for x, y in zip(xs, ys)) / sxx if sxx > 0 else None


def fit_constants(records: list[dict], base: Constants, source: str) -> Constants:
    """Refit the constants to bench records {"config": TrainConfig dict, "model": ModelInfo dict, and measured
    rollout_s, reward_s, update_s, rollout_peak_delta_bytes, reward_peak_delta_bytes, update_peak_delta_bytes}.

    Each constant is a least-squares slope through the origin over the records that measure it; constants no
    record measures keep their `base` value.
    """
    rows = []
    for r in records:
        # records from before the detached unconditional pass (docs/method.md §7) backpropagated through both
        config = TrainConfig.from_dict({"uncond_grad": True, **r["config"]})
        info = ModelInfo(**r["model"])
        rows.append((r, workload(config, info), info, config.lora_rank * r["model"]["lora_params_per_rank"]))
    c = dataclasses.replace(base, source=source)

    def slope(xs, ys, old):
        a = _through_origin(xs, ys)
        return old if a is None or a <= 0 else a

    # time: effective FLOP/s from rollouts, then the cost of a training pass from updates
    flops = [w.trajectories * w.nfe_per_trajectory * w.cfg_rows * m.flops_per_row for r, w, m, _ in rows]
    c.flops_per_s = slope([r["rollout_s"] for r, *_ in rows], flops, c.flops_per_s)
    passes = [
        (r["update_s"] * c.flops_per_s / m.flops_per_row - w.update_nograd_forwards) / w.update_forwards
        - w.checkpointing
        for r, w, m, _ in rows
        if r.get("update_s")
    ]
    c.train_cost = max(1.0, sum(passes) / len(passes)) if passes else c.train_cost
    c.reward_s_per_image = slope(
        [w.images for _, w, *_ in rows], [r["reward_s"] for r, *_ in rows], c.reward_s_per_image
    )
    mem = [x for x in rows if x[0].get("rollout_peak_delta_bytes") is not None]
    if not mem:
        return c
    c.reward_bytes_per_image = slope(
        [w.images_per_call for _, w, *_ in mem],
        [r["reward_peak_delta_bytes"] for r, *_ in mem],
        c.reward_bytes_per_image,
    )
    # rollout: two regressors (one chunk's activations, latents in flight), solved by least squares
    X = torch.tensor(
        [
            [w.rollout_rows * m.sequence * m.width * w.act_bytes, w.rollout_latents * m.latent_elems * 4.0]
            for _, w, m, _ in mem
        ],
        dtype=torch.float64,
    )
    y = torch.tensor([r["rollout_peak_delta_bytes"] for r, *_ in mem], dtype=torch.float64)
    a = b = -1.0
    if len(mem) >= 2 and torch.linalg.matrix_rank(X) == 2:
        a, b = torch.linalg.lstsq(X, y[:, None]).solution.flatten().tolist()
    if a > 0 and b > 0:
        c.act_infer, c.latent_copies = a, b
    else:  # too few or collinear records: keep latent_copies, fit the activations alone
        c.act_infer = slope(X[:, 0].tolist(), (y - c.latent_copies * X[:, 1]).tolist(), c.act_infer)

    # update: kept activations per block without checkpointing, then with it (the terms of `update_bytes`)
    def unit(w, m, rows=None):
        return (w.update_rows if rows is None else rows) * m.sequence * m.width * w.act_bytes

    plain = [x for x in mem if not x[1].checkpointing]
    c.act_train = slope(
        [unit(w, m) * m.depth for _, w, m, _ in plain],
        [
            r["update_peak_delta_bytes"] - c.act_infer * unit(w, m, w.update_ref_rows) - 4 * lora
            for r, w, m, lora in plain
        ],
        c.act_train,
    )
    ckpt = [x for x in mem if x[1].checkpointing]
    c.act_ckpt = slope(
        [unit(w, m) * m.depth for _, w, m, _ in ckpt],
        [
            r["update_peak_delta_bytes"]
            - max(c.act_train * unit(w, m), c.act_infer * unit(w, m, w.update_ref_rows))
            - 4 * lora
            for r, w, m, lora in ckpt
        ],
        c.act_ckpt,
    )
    return c
