"""The CFG-guided velocity in training: gradient through the conditional pass only (docs/method.md §7)."""

import pytest
import torch

from densegrpo_core.method.guidance import GuidedVelocity


class CondModel(torch.nn.Module):
    """v = W·x + U·cond·τ, recording whether autograd was on for each conditioning it saw."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(6, 6, generator=g) * 0.3)
        self.u = torch.nn.Parameter(torch.randn(3, 6, generator=g) * 0.3)
        self.calls = []

    def forward(self, x, tau, cond):
        self.calls.append((cond.shape[0], torch.is_grad_enabled()))
        return torch.tanh(x @ self.w + (cond @ self.u) * tau[:, None])


def setup(scale=4.5):
    g = torch.Generator().manual_seed(1)
    model = CondModel()
    cond, uncond = torch.randn(5, 3, generator=g), torch.zeros(5, 3)
    x, weight = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    return model, cond, uncond, x, weight, scale


def grads(model, v, weight):
    return torch.autograd.grad((v * weight).sum(), [model.w, model.u])


def test_detached_uncond_gradient_matches_flow_grpos_compute_log_prob():
    model, cond, uncond, x, weight, s = setup()
    rows = torch.arange(5)
    v = GuidedVelocity(model, cond, uncond, s).velocity(x, 0.7, rows)
    # reference, as Flow-GRPO writes it: one batched pass, the unconditional half detached
    tau = torch.full((10,), 0.7)
    v_u, v_c = model(torch.cat([x, x]), tau, torch.cat([uncond, cond])).chunk(2)
    v_ref = v_u.detach() + s * (v_c - v_u.detach())
    torch.testing.assert_close(v, v_ref)
    for g, g_ref in zip(grads(model, v, weight), grads(model, v_ref, weight)):
        torch.testing.assert_close(g, g_ref)


def test_full_cfg_gradient_is_an_option_and_differs():
    model, cond, uncond, x, weight, s = setup()
    rows = torch.arange(5)
    v_full = GuidedVelocity(model, cond, uncond, s, detach_uncond=False).velocity(x, 0.7, rows)
    tau = torch.full((5,), 0.7)
    v_u, v_c = model(x, tau, uncond), model(x, tau, cond)
    v_ref = v_u + s * (v_c - v_u)
    g_full, g_ref = grads(model, v_full, weight), grads(model, v_ref, weight)
    for a, b in zip(g_full, g_ref):
        torch.testing.assert_close(a, b)
    v_det = GuidedVelocity(model, cond, uncond, s).velocity(x, 0.7, rows)
    g_det = grads(model, v_det, weight)
    assert not torch.allclose(g_det[0], g_full[0], atol=1e-4)


def test_unconditional_pass_runs_without_autograd_in_training():
    model, cond, uncond, x, _, s = setup()
    guide = GuidedVelocity(model, cond, uncond, s)
    guide.velocity(x, 0.5, torch.arange(5))
    assert model.calls == [(5, False), (5, True)]  # uncond without autograd, then cond with it
    assert guide.forward_calls == 2 and guide.nfe == 5


def test_rollouts_without_autograd_run_cond_and_uncond_as_one_batch():
    model, cond, uncond, x, _, s = setup()
    guide = GuidedVelocity(model, cond, uncond, s)
    with torch.no_grad():
        guide.velocity(x, 0.5, torch.arange(5))
    assert model.calls == [(10, False)] and guide.forward_calls == 1


@pytest.mark.parametrize("uncond_grad", [False, True])
def test_trainer_iteration_runs_with_either_cfg_gradient(tmp_path, uncond_grad):
    from densegrpo_core.models.pipeline import load_pipeline
    from densegrpo_core.rewards import get_reward
    from densegrpo_core.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        out_dir=str(tmp_path / "run"),
        steps=3,
        prompts_per_iteration=2,
        group_size=2,
        train_batch=4,
        lora_rank=2,
        lora_alpha=4,
        eval_every=0,
        save_every=0,
        uncond_grad=uncond_grad,
    )
    pipe, prompts, _ = load_pipeline("toy")
    m = Trainer(cfg, pipe, get_reward("toy"), prompts).iteration()
    assert m["optimizer_steps"] >= 1 and m["grad_norm"] > 0
