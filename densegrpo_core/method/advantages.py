"""Latent rewards → dense rewards → group advantages (docs/method.md §5-§6).

Notation map: R (B, T+1) in grid order, R[:, k] = R_{T-k}: R[:, 0] = R_T (pure-ODE sample from the
initial noise), R[:, T] = R_0 (the SDE sample itself). ΔR (B, T): ΔR[:, k] = ΔR_t for the step
x_t → x_{t-1}, t = T - k. `groups` (B,) gives each sample's prompt group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

STD_EPS = 1e-4


def check_rewards(R: torch.Tensor, name: str = "rewards") -> torch.Tensor:
    """Raise a ValueError naming the samples whose rewards are not finite."""
    R = torch.as_tensor(R, dtype=torch.float32)
    bad = ~torch.isfinite(R)
    if bad.any():
        rows = bad.reshape(R.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"{name} are not finite for samples {rows}")
    return R


def dense_rewards(R: torch.Tensor) -> torch.Tensor:
    """ΔR_t = R_{t-1} - R_t for t = T … 1 (DenseGRPO Eq. 9, docs/method.md §5). (B, T+1) → (B, T)."""
    R = check_rewards(R, "latent rewards")
    return R[:, 1:] - R[:, :-1]


def prompt_groups(prompts: list[str]) -> torch.Tensor:
    """Group id of every sample, keyed by prompt text: equal texts share a group (docs/method.md §6). → (B,) long."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(p, len(ids)) for p in prompts], dtype=torch.long)


def check_groups(groups: torch.Tensor, batch: int) -> torch.Tensor:
    groups = torch.as_tensor(groups, dtype=torch.long).flatten()
    if groups.numel() != batch:
        raise ValueError(f"groups must give one group id per sample ({batch}), got {groups.numel()}")
    _, counts = torch.unique(groups, return_counts=True)
    if (counts < 2).any():
        raise ValueError(f"each prompt group needs group size >= 2 samples, got sizes {counts.tolist()}")
    return groups


def group_normalize(z: torch.Tensor, groups: torch.Tensor, global_std: bool = False) -> torch.Tensor:
    """norm(z) = (z - mean_G(z)) / (std_G(z) + 1e-4), population std, per step (DenseGRPO Eq. 10, docs/method.md §6).

    z: (B, T) or (B,); groups: (B,). With `global_std` the std is over the whole batch at that step.
    Groups whose std is 0 get advantage exactly 0.
    """
    squeeze = z.ndim == 1
    z = z.float().reshape(z.shape[0], -1)  # (B, T)
    groups = check_groups(groups, z.shape[0]).to(z.device)
    out = torch.zeros_like(z)
    global_sd = z.std(dim=0, unbiased=False, keepdim=True)  # (1, T)
    for g in torch.unique(groups):
        m = groups == g
        zg = z[m]  # (G, T)
        sd = zg.std(dim=0, unbiased=False, keepdim=True)  # (1, T)
        denom = (global_sd if global_std else sd) + STD_EPS
        adv = (zg - zg.mean(dim=0, keepdim=True)) / denom
        out[m] = torch.where(sd > 0, adv, torch.zeros_like(adv))
    return out.squeeze(1) if squeeze else out


def cosine_credit_weights(latents: torch.Tensor) -> torch.Tensor:
    """CoCA weights w_t = (s_{t-1} - s_t) / Σ(s_{t-1} - s_t), s_t = cos(x_t, x_0) (docs/method.md §6).

    latents (B, T+1, ...) → w (B, T). A trajectory with no total gain gets uniform weights 1/T.
    """
    flat = latents.float().flatten(2)  # (B, T+1, D)
    s = torch.nn.functional.cosine_similarity(flat, flat[:, -1:], dim=-1)  # (B, T+1), s[:, T] = 1
    gains = s[:, 1:] - s[:, :-1]  # (B, T)
    total = gains.sum(dim=1, keepdim=True)  # (B, 1) = 1 - s_T
    T = gains.shape[1]
    return torch.where(
        total.abs() > 1e-12,
        gains / total.where(total.abs() > 1e-12, torch.ones_like(total)),
        torch.full_like(gains, 1.0 / T),
    )


def _flow_grpo(R: torch.Tensor, groups: torch.Tensor, latents, global_std: bool) -> torch.Tensor:
    B, T = R.shape[0], R.shape[1] - 1
    return group_normalize(R[:, -1], groups, global_std)[:, None].expand(B, T)


def _dense_grpo(R: torch.Tensor, groups: torch.Tensor, latents, global_std: bool) -> torch.Tensor:
    return group_normalize(dense_rewards(R), groups, global_std)


def _dense_baseline(R: torch.Tensor, groups: torch.Tensor, latents, global_std: bool) -> torch.Tensor:
    return group_normalize(R[:, 1:], groups, global_std)  # norm_t(R_{t-1})


def _coca(R: torch.Tensor, groups: torch.Tensor, latents, global_std: bool) -> torch.Tensor:
    B, T = R.shape[0], R.shape[1] - 1
    if latents is None:
        raise ValueError("advantage mode 'coca' needs the trajectory latents")
    if latents.shape[:2] != (B, T + 1):
        raise ValueError(f"latents must be (B, T+1, ...) = ({B}, {T + 1}, ...), got {tuple(latents.shape)}")
    w = cosine_credit_weights(latents).to(R.device)  # (B, T)
    return group_normalize(T * w * R[:, -1][:, None], groups, global_std)


@dataclass(frozen=True)
class AdvantageMode:
    """One advantage mode: what the rollout must provide for it, and how it turns R (B, T+1) into A (B, T)."""

    name: str
    needs_ode_branches: bool  # R_t of every step: the rollout runs ODE_t(x_t) for every t (dense rewards)
    needs_latents: bool  # the advantage reads the stored trajectory latents (B, T+1, ...)
    reward_offsets: tuple[int, ...]  # the advantage of a trained step k reads the R columns k + o (grid order:
    # o = 0 is R_t, o = 1 is R_{t-1}); () = only R_0. With an SDE window the rollout completes only those (§10)
    advantage: Callable[..., torch.Tensor]  # (R, groups, latents, global_std) → unclipped A (B, T)
    description: str
    global_std: bool = False  # default std: the batch's (Flow-GRPO's configs for its GRPO baseline) or the
    # group's (DenseGRPO's Eq. 10); TrainConfig.global_std overrides it (docs/method.md §6)


ADVANTAGE_MODE_RECORDS: dict[str, AdvantageMode] = {
    m.name: m
    for m in (
        AdvantageMode(
            "flow_grpo",
            False,
            False,
            (),
            _flow_grpo,
            "Flow-GRPO: the normalized final reward R_0 at every step",
            global_std=True,  # config/grpo.py pickscore_sd3 / geneval_sd3 / ocr_sd3: sample.global_std = True
        ),
        AdvantageMode("dense_grpo", True, False, (0, 1), _dense_grpo, "DenseGRPO: normalized per-step rewards ΔR_t"),
        AdvantageMode(
            "dense_baseline", True, False, (1,), _dense_baseline, "normalized ODE-completion rewards R_{t-1}"
        ),
        AdvantageMode("coca", False, True, (), _coca, "CoCA: R_0 spread over the steps by cosine-gain weights"),
    )
}
ADVANTAGE_MODES = tuple(ADVANTAGE_MODE_RECORDS)  # the mode names, in the paper's order


def advantage_mode(name: str) -> AdvantageMode:
    """The record of mode `name`; a ValueError naming the known modes otherwise."""
    if name not in ADVANTAGE_MODE_RECORDS:
        raise ValueError(f"unknown advantage mode {name!r}; expected one of {', '.join(ADVANTAGE_MODES)}")
    return ADVANTAGE_MODE_RECORDS[name]


def group_advantages(
    R: torch.Tensor,
    groups: torch.Tensor,
    mode: str = "dense_grpo",
    *,
    latents: torch.Tensor | None = None,
    global_std: bool = False,
    clip: float = 5.0,
) -> torch.Tensor:
    """Per-step advantages A (B, T) for one of the paper's four modes, clipped to [-A_max, A_max] (docs/method.md §6).

    R: (B, T+1) latent rewards in grid order; latents: (B, T+1, ...), needed only for `coca`.
    """
    record = advantage_mode(mode)
    R = check_rewards(R, "latent rewards")
    if R.ndim != 2 or R.shape[1] < 2:
        raise ValueError(f"latent rewards must be (B, T+1) with T >= 1, got shape {tuple(R.shape)}")
    if not clip > 0:
        raise ValueError(f"advantage clip A_max must be > 0, got {clip}")
    adv = record.advantage(R, groups, latents, global_std)
    return adv.clamp(-clip, clip).contiguous()
