"""The estimator's weight bytes per base dtype (fp8 = 1 byte/parameter, cast per layer), the job's
reservation, the options that make a run fit, and fp32 LoRA masters on fp8 base layers."""

import dataclasses

import pytest
import torch

from densegrpo_core.app.benchmark.dit import DiT, sd35_medium, tiny_dit
from densegrpo_core.models.lora import inject_lora, lora_parameters
from densegrpo_core.resources.estimate import DeviceInfo, estimate, fits, model_info, with_base_dtype
from densegrpo_core.resources.fit_options import fitting_options
from densegrpo_core.training.trainer import TrainConfig

GiB = 2**30


@pytest.fixture(scope="module")
def sd35m():
    with torch.device("meta"):
        model = DiT(sd35_medium())
    return model_info(model, sd35_medium().latent_shape, compute_dtype=torch.bfloat16)


def cfg(**kw):
    base = dict(
        steps=10,
        group_size=8,
        prompts_per_iteration=1,
        advantage_mode="dense_grpo",
        max_batch=64,
        train_batch=8,
        grad_checkpointing=True,
    )
    return TrainConfig(**{**base, **kw})


def gpu(free_gib):
    return DeviceInfo("cuda", "test", int(80 * GiB), int(free_gib * GiB))


def test_model_info_counts_bytes_per_parameter_of_the_stored_dtype():
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2), (torch.float8_e4m3fn, 1)):
        with torch.device("meta"):
            model = DiT(tiny_dit()).to(dtype)
        info = model_info(model, tiny_dit().latent_shape, compute_dtype=torch.bfloat16 if size == 1 else None)
        assert info.weight_bytes == size
        assert info.cast_params == (info.block_params if size == 1 else 0)


def test_fp8_base_halves_the_weight_bytes_of_bf16(sd35m):
    bf16 = estimate(cfg(), with_base_dtype(sd35m, "bfloat16"), gpu(80))
    fp8 = estimate(cfg(), with_base_dtype(sd35m, "float8_e4m3fn"), gpu(80))
    assert fp8.breakdown["weights_bytes"] == pytest.approx(bf16.breakdown["weights_bytes"] / 2, rel=1e-3)
    assert fp8.peak_bytes < bf16.peak_bytes


def test_a_bf16_network_computes_activations_in_bf16_without_autocast(sd35m):
    fp32_run = estimate(cfg(dtype="float32"), sd35m, gpu(80))
    autocast = estimate(cfg(dtype="bfloat16"), sd35m, gpu(80))
    assert fp32_run.breakdown["workload"]["act_bytes"] == 2
    assert fp32_run.peak_bytes == autocast.peak_bytes


def test_fp8_casts_cost_every_block_without_checkpointing_and_one_block_with_it(sd35m):
    fp8, bf16 = with_base_dtype(sd35m, "float8_e4m3fn"), with_base_dtype(sd35m, "bfloat16")
    per_block = sd35m.block_params / sd35m.depth * 2
    for ckpt, blocks in ((False, sd35m.depth + 1), (True, 1)):
        extra = (
            estimate(cfg(grad_checkpointing=ckpt), fp8, gpu(80)).breakdown["update_bytes"]
            - estimate(cfg(grad_checkpointing=ckpt), bf16, gpu(80)).breakdown["update_bytes"]
        )
        assert extra == pytest.approx(blocks * per_block, rel=1e-6)


def test_fp8_without_checkpointing_is_no_smaller_than_bf16_since_autograd_keeps_the_casts(sd35m):
    off = cfg(grad_checkpointing=False)
    assert (
        estimate(off, with_base_dtype(sd35m, "float8_e4m3fn"), gpu(80)).peak_bytes
        > estimate(off, with_base_dtype(sd35m, "bfloat16"), gpu(80)).peak_bytes
    )
    on = cfg(grad_checkpointing=True)
    assert (
        estimate(on, with_base_dtype(sd35m, "float8_e4m3fn"), gpu(80)).peak_bytes
        < estimate(on, with_base_dtype(sd35m, "bfloat16"), gpu(80)).peak_bytes
    )


def test_unknown_base_dtype_is_refused_naming_the_choices(sd35m):
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        with_base_dtype(sd35m, "int4")


def test_the_reservation_is_the_peak_beyond_the_weights_the_job_already_holds(sd35m):
    e = estimate(cfg(), sd35m, gpu(80), reward_model_bytes=1e9)
    assert e.reserve_bytes == pytest.approx(e.peak_bytes - e.breakdown["weights_bytes"] - 1e9)
    assert e.reserve_bytes >= e.breakdown["lora_bytes"] + e.breakdown["optimizer_bytes"]


def test_a_run_that_fits_as_it_is_needs_no_option(sd35m):
    assert fits(estimate(cfg(), sd35m, gpu(80)), gpu(80))


def test_options_name_each_single_change_that_fits_with_its_estimate(sd35m):
    config = cfg(grad_checkpointing=False)
    free = estimate(config, sd35m, gpu(80)).peak_bytes / GiB * 0.8  # 20 % too little
    options = fitting_options(config, sd35m, gpu(free))
    changed = {k for o in options for k in o.changes}
    assert {"grad_checkpointing", "train_batch"} <= changed
    for o in options:
        assert o.estimate.peak_bytes <= 0.9 * free * GiB
        assert "together" not in o.notes


def test_options_combine_changes_when_no_single_one_is_enough(sd35m):
    config = cfg(grad_checkpointing=False, group_size=24)
    ckpt_fp8 = estimate(
        dataclasses.replace(config, grad_checkpointing=True), with_base_dtype(sd35m, "float8_e4m3fn"), gpu(80)
    ).peak_bytes
    options = fitting_options(config, sd35m, gpu(ckpt_fp8 / GiB / 0.9 * 0.95))
    assert len(options) == 1 and options[0].notes == ["together"]
    assert {"base_dtype", "grad_checkpointing"} <= set(options[0].changes)


def test_no_option_when_even_the_smallest_settings_do_not_fit(sd35m):
    assert fitting_options(cfg(), sd35m, gpu(0.5)) == []


class Fp8Linear(torch.nn.Linear):
    """A Linear stored in fp8 and computed in the input's dtype, like ComfyUI's manual-cast ops."""

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class Fp8Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            [torch.nn.ModuleDict({"attn": torch.nn.ModuleDict({"qkv": Fp8Linear(8, 8)})})]
        )

    def forward(self, x):
        return self.blocks[0]["attn"]["qkv"](x)


def test_lora_on_fp8_base_layers_is_float32_and_trains():
    model = Fp8Block().to(torch.float8_e4m3fn)
    inject_lora(model, r"blocks\.0\.attn\.qkv", rank=2, alpha=2.0)
    params = lora_parameters(model)
    assert {p.dtype for p in params} == {torch.float32}
    assert model.blocks[0]["attn"]["qkv"].base_layer.weight.dtype == torch.float8_e4m3fn
    down = params[0]
    assert len(torch.unique(down)) == down.numel()  # drawn in fp32, not quantised to 8 bits
    assert torch.count_nonzero(params[1]) == 0
    model(torch.randn(3, 8)).square().sum().backward()
    assert all(p.grad is not None for p in params)
