"""Weighted sums of rewards: r = Σ_k w_k · r_k, each term kept for reporting.

After each call `last_terms` maps every term's name to its unweighted scores (B,) float32; the sum is what
training uses.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import check_reward_inputs, check_reward_output
from .calls import RewardCallError, RewardOutputError, one_line


class WeightedReward:
    def __init__(self, terms: dict[str, tuple[float, object]]):
        if not terms:
            raise ValueError("a weighted reward needs at least one term")
        self.terms = {name: (float(w), reward) for name, (w, reward) in terms.items()}
        self.weights = {name: w for name, (w, _) in self.terms.items()}
        self.name = ",".join(f"{n}={w:g}" for n, w in self.weights.items())
        self.last_terms: dict[str, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_reward_inputs(images, prompts)
        terms = {name: self._term(name, reward, images, prompts) for name, (_, reward) in self.terms.items()}
        self.last_terms = terms  # name → (B,)
        return sum(self.weights[name] * r for name, r in terms.items()).float()

    @staticmethod
    def _term(name: str, reward, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """One term's scores (B,), its failures named by the term."""
        try:
            scores = reward(images, prompts)
        except (RewardOutputError, RewardCallError):
            raise
        except Exception as e:  # noqa: BLE001 - named by the term, the original as __cause__
            raise RewardCallError(f"reward term {name!r} raised {one_line(e)}") from e
        return check_reward_output(scores, images.shape[0], name).to(images.device)
