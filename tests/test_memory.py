"""Memory features: gradient checkpointing, offloading, the optimizer choice, the stage meter, bf16 masters."""

import copy

import pytest
import torch
import torch.nn as nn

from densegrpo_core.app.benchmark.dit import DiT, RandomTextEncoder, tiny_dit
from densegrpo_core.models.lora import inject_lora, lora_parameters
from densegrpo_core.models.pipeline import load_pipeline
from densegrpo_core.models.toy.model import ToyDiT, ToyDiTConfig
from densegrpo_core.resources import memory
from densegrpo_core.resources.memory import (
    StageMeter,
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    find_block_lists,
    is_checkpointed,
    offloadable_modules,
    offloaded,
)
from densegrpo_core.rewards import get_reward
from densegrpo_core.training.optimizer import build_optimizer
from densegrpo_core.training.trainer import TrainConfig, Trainer

SMALL = dict(
    steps=4,
    prompts_per_iteration=2,
    group_size=3,
    train_batch=3,
    lora_rank=4,
    lora_alpha=8,
    eval_every=0,
    save_every=0,
    eval_seeds=(0,),
    eval_steps=4,
    lr=1e-3,
)


def make_trainer(tmp_path, name="run", reward=None, **kw):
    cfg = TrainConfig(out_dir=str(tmp_path / name), **{**SMALL, **kw})
    pipe, train_prompts, _ = load_pipeline("toy")
    return Trainer(cfg, pipe, reward or get_reward("toy"), train_prompts)


def lora_dit(seed=0):
    torch.manual_seed(seed)
    model = DiT(tiny_dit())
    inject_lora(model, "mmdit", rank=4, alpha=8, seed=seed)
    with torch.no_grad():  # a non-zero adapter, so its gradients flow through every path
        for p in lora_parameters(model):
            p.normal_(0, 0.1)
    return model


def loss_and_grads(model, x, tau, cond):
    model.zero_grad(set_to_none=True)
    loss = model(x, tau, cond).square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in lora_parameters(model)]


def dit_inputs(batch=3):
    g = torch.Generator().manual_seed(1)
    cfg = tiny_dit()
    return (
        torch.randn(batch, *cfg.latent_shape, generator=g),
        torch.rand(batch, generator=g),
        RandomTextEncoder(cfg)(["a", "b", "a"][:batch]),
    )


# ------------------------------------------------------------------------------------ checkpointing
def test_checkpointing_gives_identical_loss_and_lora_gradients():
    model, inputs = lora_dit(), dit_inputs()
    loss0, grads0 = loss_and_grads(model, *inputs)
    names = enable_gradient_checkpointing(model)
    assert names == ["joint_blocks.0", "joint_blocks.1"]
    loss1, grads1 = loss_and_grads(model, *inputs)
    assert torch.allclose(loss0, loss1, atol=1e-6, rtol=0)
    for a, b in zip(grads0, grads1):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_checkpointing_keeps_fewer_activations_for_backward():
    model, inputs = lora_dit(), dit_inputs()

    def saved_bytes():
        total = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: total.append(t.numel() * t.element_size()) or t, lambda t: t
        ):
            model(*inputs).square().mean()
        return sum(total)

    plain = saved_bytes()
    enable_gradient_checkpointing(model)
    assert saved_bytes() < 0.5 * plain


def test_checkpointing_is_removable_and_leaves_the_model_as_it_was():
    model, inputs = lora_dit(), dit_inputs()
    before = model(*inputs)
    enable_gradient_checkpointing(model)
    enable_gradient_checkpointing(model)  # idempotent
    assert all(is_checkpointed(b) for b in model.joint_blocks)
    assert disable_gradient_checkpointing(model) == 2
    assert not any(is_checkpointed(b) or "forward" in b.__dict__ for b in model.joint_blocks)
    assert torch.equal(before, model(*inputs))


def test_checkpointing_is_bypassed_without_gradients(monkeypatch):
    model, inputs = lora_dit(), dit_inputs()
    enable_gradient_checkpointing(model)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        model(*inputs)
    assert calls == []
    model(*inputs)
    assert len(calls) == 2


def test_checkpointing_survives_deepcopy_bound_to_the_copy():
    model, inputs = lora_dit(), dit_inputs()
    enable_gradient_checkpointing(model)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(0.01)
    assert is_checkpointed(clone.joint_blocks[0])
    assert not torch.equal(model(*inputs), clone(*inputs))  # the copy runs its own weights


def test_block_lists_are_found_by_name_or_path():
    class FluxLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.double_blocks = nn.ModuleList([nn.Linear(2, 2)])
            self.single_blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    assert set(find_block_lists(FluxLike())) == {"double_blocks", "single_blocks"}
    assert set(find_block_lists(FluxLike(), ["single_blocks"])) == {"single_blocks"}
    toy = ToyDiT(ToyDiTConfig())
    assert list(find_block_lists(toy)) == ["blocks"]
    with pytest.raises(ValueError, match="no transformer block list"):
        find_block_lists(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no ModuleList at 'nope'"):
        find_block_lists(toy, ["nope"])


def test_trainer_with_checkpointing_takes_the_same_update(tmp_path):
    plain, ckpt = make_trainer(tmp_path, "plain"), make_trainer(tmp_path, "ckpt", grad_checkpointing=True)
    assert all(is_checkpointed(b) for b in ckpt.model.blocks)
    m0, m1 = plain.iteration(), ckpt.iteration()
    assert m0["loss"] == pytest.approx(m1["loss"], abs=1e-6)
    for a, b in zip(plain.params, ckpt.params):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ offload
class MovingModule(nn.Module):
    """Records `.to()` calls; its parameter says it lives on `home` without holding data there."""

    def __init__(self, home="meta"):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, device=home))
        self.moves = []

    def to(self, device):
        self.moves.append(str(torch.device(device)))
        return self


class HoldsModel:
    def __init__(self, net):
        self.clip = type("Clip", (), {})()
        self.clip.model = net

    def __call__(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def test_offload_moves_modules_out_and_back_also_on_errors():
    net = MovingModule()
    with offloaded(net, to="cpu") as moved:
        assert moved == [net] and net.moves == ["cpu"]
    assert net.moves == ["cpu", "meta"]
    with pytest.raises(RuntimeError, match="boom"):
        with offloaded(net, to="cpu"):
            raise RuntimeError("boom")
    assert net.moves[-1] == "meta"


def test_offload_finds_modules_inside_rewards_methods_partials_and_closures():
    import functools

    a, b, c, d = MovingModule(), MovingModule(), MovingModule(), MovingModule()

    def closure(x):
        return d(x)

    found = offloadable_modules(HoldsModel(a), HoldsModel(b).__call__, functools.partial(print, c), closure)
    assert {id(m) for m in found} == {id(a), id(b), id(c), id(d)}


def test_offload_never_moves_the_diffusion_network_or_plain_callables():
    net = nn.Sequential(nn.Linear(2, 2))
    holder = HoldsModel(net)
    assert offloadable_modules(holder, lambda x: x, exclude=(net,)) == []
    parent = nn.Sequential(net)  # a module that contains the network
    assert offloadable_modules(HoldsModel(parent), exclude=(net,)) == []
    with offloaded(lambda x: x, to="cpu") as moved:
        assert moved == []


def test_offload_uses_to_and_device_of_objects_without_modules():
    class Reward:
        device = torch.device("meta")
        moves = []

        def to(self, device):
            self.moves.append(str(device))

    r = Reward()
    with offloaded(r, to="cpu"):
        assert r.moves == ["cpu"]
    assert r.moves == ["cpu", "meta"]


def test_trainer_offloads_the_reward_model_outside_the_reward_stage(tmp_path):
    net = MovingModule()
    seen_in_reward = []

    class Reward(HoldsModel):
        def __call__(self, images, prompts):
            seen_in_reward.append(list(net.moves))
            return get_reward("toy")(images, prompts)

    t = make_trainer(tmp_path, reward=Reward(net), offload_reward=True)
    t.iteration()
    assert net.moves == ["cpu", "meta", "cpu", "meta"]  # parked for the rollout and the update
    assert all(m == ["cpu", "meta"] for m in seen_in_reward)  # at home while it scores


# ---------------------------------------------------------------------------------------- optimizer
def test_8bit_adamw_errors_clearly_without_bitsandbytes_or_builds(tmp_path):
    params = [nn.Parameter(torch.zeros(4))]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="optional package bitsandbytes"):
            build_optimizer("adamw8bit", params, 1e-3, (0.9, 0.999), 0.0)
        with pytest.raises(ImportError, match="bitsandbytes"):
            make_trainer(tmp_path, optimizer="adamw8bit")
    else:
        assert "8bit" in type(build_optimizer("adamw8bit", params, 1e-3, (0.9, 0.999), 0.0)).__name__
    assert isinstance(build_optimizer("adamw", params, 1e-3, (0.9, 0.999), 0.0), torch.optim.AdamW)


def test_unknown_optimizer_and_bad_rollout_budget_are_config_errors():
    with pytest.raises(ValueError, match="optimizer must be one of adamw, adamw8bit"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="rollout_memory_gb"):
        TrainConfig(rollout_memory_gb=0)


# ------------------------------------------------------------------------------- bf16, memory budget
def test_bf16_weights_train_float32_lora_masters_with_float32_log_probs(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "bf16"), dtype="bfloat16", **SMALL)
    pipe, prompts, _ = load_pipeline("toy")
    pipe.model.to(torch.bfloat16)
    t = Trainer(cfg, pipe, get_reward("toy"), prompts)
    assert {p.dtype for p in t.params} == {torch.float32}
    m = t.iteration()
    assert m["optimizer_steps"] >= 1 and all(torch.isfinite(p).all() for p in t.params)
    assert t.last_rewards.dtype == torch.float32


def test_rollout_memory_budget_lowers_the_chunk_not_the_result(tmp_path):
    full = make_trainer(tmp_path, "full")
    small = make_trainer(tmp_path, "small", rollout_memory_gb=1e-4)  # ~100 KiB of activations per call
    assert 2 <= small.max_batch < full.max_batch == 256
    m0, m1 = full.iteration(), small.iteration()
    assert m0["nfe_per_trajectory"] == m1["nfe_per_trajectory"]
    assert torch.allclose(full.last_rewards, small.last_rewards, atol=1e-5)


def test_rollout_memory_budget_needs_a_model_the_estimator_can_count(tmp_path, tiny_velocity):
    from densegrpo_core.models.pipeline import FlowPipeline

    pipe = FlowPipeline(
        model=tiny_velocity,
        encode=lambda p: torch.zeros(len(p), 4),
        null_cond=None,
        decode=lambda x: x[:, :1].expand(-1, 3, -1, -1).movedim(1, -1).sigmoid(),
        latent_shape=(2, 4, 4),
        arch=r"conv",
        default_cfg=1.0,
    )
    cfg = TrainConfig(out_dir=str(tmp_path / "x"), rollout_memory_gb=1.0, lora_targets=r"cond", **SMALL)
    with pytest.raises(ValueError, match="rollout_memory_gb needs a model the estimator can count"):
        Trainer(cfg, pipe, lambda im, p: im.mean(dim=(1, 2, 3)), ["a", "b"])


# ------------------------------------------------------------------------------------------- meter
def test_stage_meter_on_cpu_reports_the_peak_tensor_memory_of_a_stage():
    meter = StageMeter("cpu", memory=True)
    keep = torch.zeros(1)
    with meter.stage("work"):
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB while a is alive
        del a, b
        keep = torch.empty(1 << 18)  # 1 MiB
    assert 6 * 2**20 <= meter.last["work_peak_delta_bytes"] < 6.5 * 2**20
    assert meter.last["work_s"] >= 0 and keep.numel() == 1 << 18


def test_stage_meter_measures_time_only_by_default_on_cpu():
    meter = StageMeter("cpu")
    with meter.stage("work"):
        torch.empty(10)
    assert set(meter.last) == {"work_s"}


def test_on_off_parsing():
    assert memory.parse_on_off("both") == [False, True]
    assert memory.parse_on_off("on") == [True]
    with pytest.raises(ValueError, match="on, off or both"):
        memory.parse_on_off("maybe")


def test_checkpointed_blocks_recompute_with_the_dict_arguments_as_they_were_at_the_call():
    """ComfyUI's Flux changes transformer_options after each block call; the recompute must not see that."""
    from densegrpo_core.resources.memory import enable_gradient_checkpointing

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x, options=None):
            return self.lin(x) * options["scale"]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block()])

    net = Net()
    x = torch.randn(2, 3)
    options = {"scale": 2.0}
    expected = torch.autograd.grad((net.blocks[0](x, options=options) ** 2).sum(), net.blocks[0].lin.weight)[0]
    enable_gradient_checkpointing(net, ["blocks"])
    loss = (net.blocks[0](x, options=options) ** 2).sum()
    options["scale"] = 5.0
    got = torch.autograd.grad(loss, net.blocks[0].lin.weight)[0]
    torch.testing.assert_close(got, expected)
