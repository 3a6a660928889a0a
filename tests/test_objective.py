"""PPO-clip + KL objective (docs/method.md §7)."""

import torch

from densegrpo_core.method.objective import grpo_loss, kl_to_reference, ppo_clip_loss


def test_on_policy_ratio_is_exactly_one():
    lp = torch.randn(8)
    _, ratio = ppo_clip_loss(lp.clone(), lp, torch.randn(8), 1e-4)
    assert torch.equal(ratio, torch.ones(8))


def test_loss_gradient_matches_closed_form_on_policy():
    old = torch.tensor([-1.0, 0.5, 2.0])
    lp = old.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    mean_ref = torch.randn(3, 4)
    mean = (mean_ref + 0.1 * torch.randn(3, 4)).requires_grad_(True)
    sigma, beta = 0.3, 0.01
    loss, stats = grpo_loss(lp, old, adv, mean, mean_ref, sigma, clip_range=1e-4, beta=beta)
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv / 3)
    torch.testing.assert_close(mean.grad, beta * (mean - mean_ref).detach() / sigma**2 / (4 * 3))
    assert stats["ratio_mean"] == 1.0 and stats["clip_frac"] == 0.0


def test_clipping_stops_gradient_beyond_range():
    old = torch.zeros(2)
    lp = torch.tensor([0.5, -0.5], requires_grad=True)  # ratios e^.5 > 1+ε and e^-.5 < 1-ε
    loss, _ = ppo_clip_loss(lp, old, torch.tensor([1.0, -1.0]), 0.2)
    loss.sum().backward()
    assert torch.equal(lp.grad, torch.zeros(2))


def test_kl_is_scaled_squared_mean_gap():
    m, r = torch.ones(2, 3), torch.zeros(2, 3)
    torch.testing.assert_close(kl_to_reference(m, r, 0.5), torch.full((2,), 1 / (2 * 0.25)))
