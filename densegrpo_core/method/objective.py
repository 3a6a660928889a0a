"""The GRPO/PPO-clip objective with a KL penalty to the frozen base model (Flow-GRPO Eq. 3-4, docs/method.md §7)."""

from __future__ import annotations

import torch


def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_clip = -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A), ρ = exp(log p_θ - log p_old) (docs/method.md §7).

    All (N,) → (loss (N,), ratio (N,)).
    """
    ratio = torch.exp(log_prob.float() - old_log_prob.float())
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    return -torch.minimum(unclipped, clipped), ratio


def kl_to_reference(mean: torch.Tensor, mean_ref: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """KL = mean over elements of (mean_θ - mean_ref)² / (2σ_t²), σ_t without Δτ (docs/method.md §7).

    (N, ...) → (N,).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=mean.device)
    sigma = sigma.reshape(-1, *([1] * (mean.ndim - 1))) if sigma.ndim == 1 else sigma
    kl = (mean.float() - mean_ref.float()) ** 2 / (2 * sigma**2)
    return kl.flatten(1).mean(dim=1)


def grpo_loss(
    log_prob, old_log_prob, advantages, mean, mean_ref, sigma, clip_range: float = 1e-4, beta: float = 0.01
) -> tuple[torch.Tensor, dict[str, float]]:
    """loss = mean(L_clip) + β·mean(KL) over a batch of trained (i, t) pairs, with PPO health stats."""
    l_clip, ratio = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range)
    kl = kl_to_reference(mean, mean_ref, sigma) if beta > 0 else torch.zeros_like(l_clip)
    loss = l_clip.mean() + beta * kl.mean()
    with torch.no_grad():
        stats = {
            "loss": loss.item(),
            "policy_loss": l_clip.mean().item(),
            "kl": kl.mean().item(),
            "ratio_mean": ratio.mean().item(),
            "clip_frac": ((ratio - 1.0).abs() > clip_range).float().mean().item(),
        }
    return loss, stats
