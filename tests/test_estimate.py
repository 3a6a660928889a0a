"""The memory/time estimator: counts, monotonicity, checkpointing, budgets, fitting and writing constants."""

import dataclasses
import json
import shutil

import pytest
import torch

from densegrpo_core.app.benchmark.dit import DiT, sd35_medium, tiny_dit
from densegrpo_core.app.benchmark.fit import fit_constants
from densegrpo_core.models.lora import inject_lora, lora_parameters
from densegrpo_core.models.toy.model import ToyDiT, ToyDiTConfig
from densegrpo_core.resources import estimate as est
from densegrpo_core.resources.estimate import Constants, DeviceInfo, estimate, model_info, rollout_max_batch, workload
from densegrpo_core.training.trainer import TrainConfig

KNOWN = Constants(
    act_infer=10.0,
    act_train=40.0,
    act_ckpt=3.0,
    latent_copies=2.5,
    flops_per_s=1e12,
    train_cost=2.5,
    reward_s_per_image=0.01,
    reward_bytes_per_image=1e6,
    source="test",
)


@pytest.fixture(scope="module")
def sd35m_info():
    with torch.device("meta"):  # counted, never allocated
        model = DiT(sd35_medium())
    return model_info(model, sd35_medium().latent_shape)


def cfg(**kw):
    base = dict(
        steps=10,
        group_size=8,
        prompts_per_iteration=1,
        advantage_mode="dense_grpo",
        dtype="bfloat16",
        max_batch=64,
        train_batch=8,
    )
    return TrainConfig(**{**base, **kw})


def test_model_info_counts_the_sd35_medium_sized_dit(sd35m_info):
    info = sd35m_info
    assert 2.2e9 < info.params < 2.3e9  # SD3.5-Medium: 2.24 B
    assert (info.width, info.depth, info.tokens, info.context_tokens) == (1536, 24, 1024, 154)
    assert info.latent_elems == 16 * 64 * 64
    # per block and stream 12·D² weights see its tokens (adaLN sees one row): 2·12·D²·(1024 + 154)·24 ≈ 1.6e12,
    # plus the 13 image self-attentions and the joint attention itself
    assert 1.8e12 < info.flops_per_row < 2.5e12


def test_model_info_lora_count_matches_an_injected_adapter():
    model = DiT(tiny_dit())
    per_rank = model_info(model, tiny_dit().latent_shape, lora_targets="mmdit").lora_params_per_rank
    inject_lora(model, "mmdit", rank=4, alpha=8)
    assert 4 * per_rank == sum(p.numel() for p in lora_parameters(model))
    assert model_info(model, tiny_dit().latent_shape).lora_params_per_rank == per_rank


def test_model_info_of_the_toy_model_has_no_text_tokens():
    info = model_info(ToyDiT(ToyDiTConfig()), (3, 16, 16))
    assert (info.tokens, info.context_tokens, info.depth, info.width) == (64, 0, 4, 96)


def test_workload_follows_the_nfe_counts_of_math_section_9():
    assert workload(cfg()).nfe_per_trajectory == 55
    assert workload(cfg(advantage_mode="flow_grpo")).nfe_per_trajectory == 10
    assert workload(cfg(ode_steps=2)).nfe_per_trajectory == 10 + 19
    w = workload(cfg(group_size=24, max_batch=64))
    assert (w.rollout_rows, w.update_rows, w.update_ref_rows, w.images) == (64, 16, 16, 24 * 11)
    assert workload(cfg(group_size=24, max_batch=64, uncond_grad=False)).update_rows == 8


def test_detached_uncond_pass_lowers_the_update_estimate(sd35m_info):
    """With CFG, autograd holds only the conditional rows unless uncond_grad (docs/method.md §7)."""
    full = estimate(cfg(), sd35m_info, constants=KNOWN).breakdown  # the default: Flow-GRPO's full CFG gradient
    detached = estimate(cfg(uncond_grad=False), sd35m_info, constants=KNOWN).breakdown
    assert workload(cfg()).update_rows == 2 * workload(cfg(uncond_grad=False)).update_rows
    assert detached["update_bytes"] < 0.6 * full["update_bytes"]
    assert detached["update_s"] < full["update_s"]


@pytest.mark.parametrize("key", ["group_size", "steps"])
def test_estimate_is_monotone_in_group_size_and_steps(sd35m_info, key):
    values = [4, 8, 16, 24] if key == "group_size" else [2, 5, 10, 20]
    ests = [estimate(cfg(**{key: v}), sd35m_info, constants=KNOWN) for v in values]
    peaks, secs = [e.peak_bytes for e in ests], [e.seconds_per_iteration for e in ests]
    assert peaks == sorted(peaks) and secs == sorted(secs) and secs[0] < secs[-1]


def test_checkpointing_lowers_the_estimated_peak_and_costs_time(sd35m_info):
    off = estimate(cfg(), sd35m_info, constants=KNOWN)
    on = estimate(cfg(grad_checkpointing=True), sd35m_info, constants=KNOWN)
    assert off.breakdown["largest_stage"] == "update"
    assert on.peak_bytes < 0.5 * off.peak_bytes
    assert on.breakdown["update_s"] > off.breakdown["update_s"]


def test_dense_rollout_costs_the_nfe_ratio_of_flow_grpo(sd35m_info):
    dense = estimate(cfg(), sd35m_info, constants=KNOWN).breakdown
    flow = estimate(cfg(advantage_mode="flow_grpo"), sd35m_info, constants=KNOWN).breakdown
    assert dense["rollout_s"] / flow["rollout_s"] == pytest.approx(5.5)


def test_8bit_optimizer_and_offload_lower_the_estimate(sd35m_info):
    base = estimate(cfg(grad_checkpointing=True), sd35m_info, constants=KNOWN, reward_model_bytes=2e9)
    bnb = estimate(
        cfg(grad_checkpointing=True, optimizer="adamw8bit"), sd35m_info, constants=KNOWN, reward_model_bytes=2e9
    )
    off = estimate(
        cfg(grad_checkpointing=True, offload_reward=True), sd35m_info, constants=KNOWN, reward_model_bytes=2e9
    )
    assert bnb.breakdown["optimizer_bytes"] == base.breakdown["optimizer_bytes"] / 4
    assert off.peak_bytes < base.peak_bytes


def test_fits_compares_with_free_memory(sd35m_info):
    e = estimate(cfg(), sd35m_info, constants=KNOWN)
    assert est.fits(e, DeviceInfo("cuda", "big", 10**13, 10**13))
    assert not est.fits(e, DeviceInfo("cuda", "small", 8 * 2**30, 8 * 2**30))
    assert "GiB peak" in e.summary()


def test_rollout_max_batch_grows_with_the_budget(sd35m_info):
    rows = [rollout_max_batch(b, sd35m_info, cfg(), KNOWN) for b in (0, 2**30, 8 * 2**30)]
    assert rows[0] == 2 and rows[0] <= rows[1] < rows[2]  # at least one guided (CFG) row


def test_fit_constants_recovers_the_constants_that_made_the_figures(sd35m_info):
    records = []
    for G in (8, 16, 24):
        for ckpt in (False, True):
            for mode in ("flow_grpo", "dense_grpo"):
                c = cfg(group_size=G, grad_checkpointing=ckpt, advantage_mode=mode, max_batch=10**6 if G == 24 else 64)
                b = estimate(c, sd35m_info, constants=KNOWN).breakdown
                records.append(
                    {
                        "config": c.to_dict(),
                        "model": dataclasses.asdict(sd35m_info),
                        **{k: b[k] for k in ("rollout_s", "reward_s", "update_s")},
                        **{f"{s}_peak_delta_bytes": b[f"{s}_bytes"] for s in ("rollout", "reward", "update")},
                    }
                )
    base = dataclasses.replace(
        KNOWN,
        act_infer=1,
        act_train=1,
        act_ckpt=1,
        latent_copies=1,
        flops_per_s=1,
        train_cost=1,
        reward_s_per_image=1,
        reward_bytes_per_image=1,
    )
    fitted = fit_constants(records, base, "fit")
    for field in (
        "act_infer",
        "act_train",
        "act_ckpt",
        "latent_copies",
        "flops_per_s",
        "train_cost",
        "reward_s_per_image",
        "reward_bytes_per_image",
    ):
        assert getattr(fitted, field) == pytest.approx(getattr(KNOWN, field), rel=1e-6), field


def test_write_constants_replaces_only_its_device_kind_in_the_json_file(tmp_path):
    path = tmp_path / "estimate_constants.json"
    shutil.copy(est.CONSTANTS_FILE, path)
    est.write_constants("cuda", dataclasses.replace(KNOWN, source="H100 test"), str(path))
    assert est.constants_for("cuda", str(path)) == dataclasses.replace(KNOWN, source="H100 test")
    assert est.constants_for("cpu", str(path)) == est.constants_for("cpu")
    assert json.loads(path.read_text())["format"] == est.CONSTANTS_FORMAT


def test_estimator_source_is_never_rewritten():
    text = open(est.__file__).read()
    assert "CONSTANTS = Constants(" not in text and ">>> CPU constants" not in text


def test_device_info_of_the_cpu():
    d = est.device_info("cpu")
    assert d.kind == "cpu" and d.total_bytes >= d.free_bytes > 0 and d.name


def test_workload_knows_the_sde_window():
    w = workload(cfg(sde_window=2))  # Flow-GRPO-Fast's range (0, 5): starts 0-3 cost 27, 25, 23, 21 NFE
    assert w.nfe_per_trajectory == pytest.approx(24.0) and w.images == 8 * 3
    assert workload(cfg(sde_window=2, advantage_mode="flow_grpo")).nfe_per_trajectory == 10


def test_estimated_rollout_time_falls_with_the_window(sd35m_info):
    full = estimate(cfg(), sd35m_info, constants=KNOWN).breakdown
    windowed = estimate(cfg(sde_window=2), sd35m_info, constants=KNOWN).breakdown
    assert windowed["rollout_s"] == pytest.approx(full["rollout_s"] * 24 / 55)
