"""The defaults reproduce Flow-GRPO's final code where the paper is silent (docs/method.md §6-§7): the full CFG
gradient, its LoRA targets and Gaussian init on SD3, its EMA schedule, its std choice for the GRPO baseline."""

import os
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diffusers_tiny import save_tiny_sd35, tiny_sd35_transformer  # noqa: E402

from densegrpo_core.method.guidance import cond_cat  # noqa: E402
from densegrpo_core.method.objective import grpo_loss  # noqa: E402
from densegrpo_core.method.sde import gaussian_log_prob, sde_step_mean, sde_step_std  # noqa: E402
from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.pipeline import load_pipeline  # noqa: E402
from densegrpo_core.rewards import get_reward  # noqa: E402
from densegrpo_core.training import ema  # noqa: E402
from densegrpo_core.training.config import TrainConfig  # noqa: E402
from densegrpo_core.training.trainer import Trainer  # noqa: E402

# scripts/train_sd3.py (Flow-GRPO) LoraConfig target_modules
FLOW_GRPO_SD3_TARGETS = [
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
]


# ------------------------------------------------------------------------------------------ CFG gradient
def captured_update(config: TrainConfig, folder: str):
    """One training iteration on the tiny SD3.5 pipeline with a random (nonzero) LoRA: the rollout and
    advantages the update used, and the LoRA gradient of its single optimizer step."""
    pipe, prompts, _ = load_pipeline(folder, train_prompts=["a red cube", "a blue ball"], height=16, width=16)
    trainer = Trainer(config, pipe, get_reward("jpeg_incompressibility"), prompts)
    with torch.no_grad():  # lora_up starts at zero; a random LoRA gives every LoRA weight a gradient
        for i, p in enumerate(trainer.params):
            p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    seen = {}
    update, optimizer_step = trainer.update, trainer._optimizer_step

    def record_update(ro, prompts, A, steps):
        seen.update(ro=ro, prompts=prompts, A=A, steps=steps, before=[p.detach().clone() for p in trainer.params])
        return update(ro, prompts, A, steps)

    def record_step():
        seen["grads"] = [p.grad.detach().clone() for p in trainer.params]
        return optimizer_step()

    trainer.update, trainer._optimizer_step = record_update, record_step
    trainer.iteration()
    return trainer, seen


def flow_grpo_gradient(trainer, seen, detach_uncond: bool) -> list[torch.Tensor]:
    """The LoRA gradient as Flow-GRPO's compute_log_prob + loss compute it, by hand: one batched forward of
    [uncond, cond], v = v_u + s·(v_c − v_u) (the unconditional half detached only with `detach_uncond`), the SDE
    step's mean and log-probability, PPO-clip + KL against the LoRA-free model, averaged over the trained steps."""
    config, pipe, ro, A, steps = trainer.config, trainer.pipe, seen["ro"], seen["A"], seen["steps"]
    with torch.no_grad():
        for p, w in zip(trainer.params, seen["before"]):
            p.copy_(w)
    cond, uncond = pipe.encode(seen["prompts"]), pipe.null_cond(len(seen["prompts"]))
    s = trainer.cfg_scale
    rows = (A[:, steps] != 0).any(dim=1).nonzero().flatten()
    cond = {k: v[rows] for k, v in cond.items()}
    uncond = {k: v[rows] for k, v in uncond.items()}

    def guided(x, tau):
        taus = torch.full((2 * len(x),), tau)
        v_u, v_c = pipe.model(torch.cat([x, x]), taus, cond_cat(uncond, cond)).chunk(2)
        if detach_uncond:
            v_u = v_u.detach()
        return v_u + s * (v_c - v_u)

    total = 0.0
    for k in steps:
        tau, tau_next, sigma = trainer.tau[k].item(), trainer.tau[k + 1].item(), trainer.sigmas[k].item()
        x, x_next = ro.latents[rows, k], ro.latents[rows, k + 1]
        mean = sde_step_mean(x, guided(x, tau), tau, tau_next, sigma)
        log_prob = gaussian_log_prob(x_next, mean, sde_step_std(tau, tau_next, sigma))
        with torch.no_grad(), lora.adapters_disabled(trainer.model):
            mean_ref = sde_step_mean(x, guided(x, tau), tau, tau_next, sigma)
        loss, _ = grpo_loss(
            log_prob, ro.log_probs[rows, k], A[rows, k], mean, mean_ref, sigma, config.clip_range, config.beta
        )
        total = total + loss / len(steps)
    return list(torch.autograd.grad(total, trainer.params))


def cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.fixture(scope="module")
def sd35_folder(tmp_path_factory):
    return save_tiny_sd35(str(tmp_path_factory.mktemp("ref") / "sd35"))


def test_the_default_update_gradient_is_flow_grpos_full_cfg_gradient_on_a_tiny_sd3(sd35_folder, tmp_path):
    config = TrainConfig(
        out_dir=str(tmp_path / "run"),
        steps=3,
        prompts_per_iteration=2,
        group_size=2,
        train_batch=4,
        lora_rank=2,
        lora_alpha=4,
        eval_every=0,
        save_every=0,
    )
    assert config.uncond_grad  # the default
    trainer, seen = captured_update(config, sd35_folder)
    full = flow_grpo_gradient(trainer, seen, detach_uncond=False)
    for g, ref in zip(seen["grads"], full):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-7)
    detached = flow_grpo_gradient(trainer, seen, detach_uncond=True)
    assert cosine(full, detached) < 0.999  # the detached form is another gradient: the comparison can tell


def test_the_detached_option_gives_the_detached_gradient(sd35_folder, tmp_path):
    config = TrainConfig(
        out_dir=str(tmp_path / "run"),
        steps=3,
        prompts_per_iteration=2,
        group_size=2,
        train_batch=4,
        lora_rank=2,
        lora_alpha=4,
        eval_every=0,
        save_every=0,
        uncond_grad=False,
    )
    trainer, seen = captured_update(config, sd35_folder)
    for g, ref in zip(seen["grads"], flow_grpo_gradient(trainer, seen, detach_uncond=True)):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------ LoRA
def test_the_sd3_reference_preset_selects_flow_grpos_modules_and_parameter_count():
    """Flow-GRPO's peft config on one tiny SD3.5 transformer, the diffusers_sd3 preset on another: the same
    modules but the last block's context query, whose output SD3 discards (context_pre_only)."""
    from peft import LoraConfig, inject_adapter_in_model

    theirs = tiny_sd35_transformer(seed=0)
    config = LoraConfig(r=32, lora_alpha=64, init_lora_weights="gaussian", target_modules=FLOW_GRPO_SD3_TARGETS)
    inject_adapter_in_model(config, theirs)
    their_layers = {n for n, m in theirs.named_modules() if hasattr(m, "lora_A")}
    ours = lora.inject_lora(tiny_sd35_transformer(seed=0), "diffusers_sd3", rank=32, alpha=64)
    our_layers = {n for n, m in ours.named_modules() if hasattr(m, "lora_A")}
    last = len(ours.transformer_blocks) - 1
    assert their_layers - our_layers == {f"transformer_blocks.{last}.attn.add_q_proj"}
    assert our_layers <= their_layers
    assert not any(".attn2." in n or ".ff" in n for n in our_layers)
    unused = theirs.transformer_blocks[last].attn.add_q_proj
    unused_params = sum(p.numel() for n, p in unused.named_parameters() if "lora_" in n)
    their_params = sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in lora.lora_parameters(ours)) == their_params - unused_params


def test_the_comfyui_mmdit_reference_preset_is_the_attention_projections():
    assert lora.TARGET_PRESETS["mmdit"] == r"joint_blocks\.\d+\.(?:x_block|context_block)\.attn\.(?:qkv|proj)"


def test_gaussian_init_draws_lora_down_with_std_one_over_rank_and_lora_up_zero():
    model = lora.inject_lora(tiny_sd35_transformer(seed=0), "diffusers_sd3", rank=8, alpha=16, seed=3)
    downs = torch.cat([p.flatten() for n, p in model.named_parameters() if "lora_A" in n])
    ups = torch.cat([p.flatten() for n, p in model.named_parameters() if "lora_B" in n])
    assert abs(downs.std().item() - 1 / 8) < 0.01 and ups.abs().sum() == 0
    kaiming = lora.inject_lora(tiny_sd35_transformer(seed=0), "diffusers_sd3", rank=8, alpha=16, init="kaiming")
    assert not torch.allclose(lora.lora_parameters(kaiming)[0], lora.lora_parameters(model)[0])


def test_the_trainer_draws_the_gaussian_init_by_default():
    assert TrainConfig().lora_init == "gaussian"
    with pytest.raises(ValueError, match="lora_init must be one of gaussian, kaiming"):
        TrainConfig(lora_init="xavier")


# ------------------------------------------------------------------------------------------ EMA
class FlowGrpoEMA:
    """Flow-GRPO's EMAModuleWrapper (flow_grpo/ema.py) as its train_sd3.py uses it, written from its semantics:
    step(parameters, optimization_step) moves each EMA weight by (1 − d)·(p − e), d = min((1 + s)/(10 + s),
    decay), only when (s + 1) % update_step_interval == 0."""

    def __init__(self, parameters, decay, update_step_interval):
        self.ema = [p.detach().clone() for p in parameters]
        self.decay, self.every = decay, update_step_interval

    def step(self, parameters, optimization_step):
        d = min((1 + optimization_step) / (10 + optimization_step), self.decay)
        if (optimization_step + 1) % self.every == 0:
            for e, p in zip(self.ema, parameters):
                e.add_((1 - d) * (p.detach() - e))


def test_the_ema_follows_flow_grpos_wrapper_over_a_scripted_sequence_of_updates():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    ours, theirs = ema.init_ema(params, 0.9), FlowGrpoEMA(params, decay=0.9, update_step_interval=8)
    for step in range(1, 41):  # as the trainer: after optimizer step `step` (Flow-GRPO's global_step += 1 first)
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        ema.update_ema(ours, params, 0.9, step, every=8)
        theirs.step(params, step)
        for a, b in zip(ours, theirs.ema):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(ours[0], params[0])  # it averaged, it did not copy


def test_the_trainers_ema_is_updated_on_flow_grpos_schedule(tmp_path):
    """Optimizer steps 1-6 leave the EMA at the initial LoRA; step 7, the first with (s + 1) % 8 == 0, moves it."""
    config = TrainConfig(
        out_dir=str(tmp_path / "run"),
        steps=3,
        prompts_per_iteration=1,
        group_size=2,
        train_batch=1,
        lora_rank=2,
        lora_alpha=4,
        eval_every=0,
        save_every=0,
        ema_decay=0.9,
    )
    pipe, prompts, _ = load_pipeline("toy")
    trainer = Trainer(config, pipe, get_reward("toy"), prompts)
    initial = [e.clone() for e in trainer.ema]
    for _ in range(30):
        trainer.iteration()
        moved = not all(torch.equal(a, b) for a, b in zip(initial, trainer.ema))
        assert moved == (trainer.optimizer_steps_done >= 7), trainer.optimizer_steps_done
        if moved:
            break
    assert moved


# ------------------------------------------------------------------------------------------ std
def test_flow_grpo_divides_by_the_batch_std_and_the_dense_modes_by_the_group_std():
    assert TrainConfig(advantage_mode="flow_grpo").std_over_batch
    assert not TrainConfig(advantage_mode="dense_grpo").std_over_batch
    assert not TrainConfig(advantage_mode="dense_baseline").std_over_batch
    assert not TrainConfig(advantage_mode="flow_grpo", global_std=False).std_over_batch
    assert TrainConfig(advantage_mode="dense_grpo", global_std=True).std_over_batch
