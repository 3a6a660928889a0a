"""The GRPO trainer on the shipped toy model: iteration contents, KL reference, resume, stop, export."""

import json
import math
import os

import pytest
import torch

from densegrpo_core.models.pipeline import load_pipeline
from densegrpo_core.rewards import get_reward
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


def make_trainer(tmp_path, name="run", **kw):
    cfg = TrainConfig(out_dir=str(tmp_path / name), **{**SMALL, **kw})
    pipe, train_prompts, eval_prompts = load_pipeline("toy")
    return Trainer(cfg, pipe, get_reward("toy"), train_prompts, eval_prompts[:2])


def lora_vector(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.params])


def test_dense_iteration_reports_fused_nfe_and_dense_counts(tmp_path):
    m = make_trainer(tmp_path).iteration()
    assert m["nfe_per_trajectory"] == 4 * 5 / 2
    assert len(m["dR_mean"]) == 4 and all(p + n <= 6 for p, n in zip(m["dR_pos"], m["dR_neg"]))
    assert m["trained_steps"] == [0, 1, 2]  # ⌊0.99·4⌋ = 3: the last step is not trained
    assert m["optimizer_steps"] >= 1


def test_flow_grpo_iteration_samples_the_sde_chain_only(tmp_path):
    m = make_trainer(tmp_path, advantage_mode="flow_grpo").iteration()
    assert m["nfe_per_trajectory"] == 4 and "dR_mean" not in m


def test_first_update_is_on_policy_with_zero_kl(tmp_path):
    t = make_trainer(tmp_path, train_batch=6, inner_epochs=1)  # one minibatch: no update before the loss
    m = t.iteration()
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and m["kl"] == pytest.approx(0.0, abs=1e-12)


def test_update_changes_only_lora_weights(tmp_path):
    t = make_trainer(tmp_path)
    base = {n: p.detach().clone() for n, p in t.model.named_parameters() if not p.requires_grad}
    before = lora_vector(t).clone()
    t.iteration()
    assert not torch.equal(before, lora_vector(t))
    for n, p in t.model.named_parameters():
        if n in base:
            assert torch.equal(base[n], p), n


def test_resume_continues_the_same_curves(tmp_path):
    full = make_trainer(tmp_path, "full", iterations=3)
    full.run()
    part = make_trainer(tmp_path, "part", iterations=2)
    part.run()
    resumed = make_trainer(tmp_path, "part", iterations=3)
    resumed.load_checkpoint(str(tmp_path / "part" / "checkpoint"))
    resumed.run()
    torch.testing.assert_close(lora_vector(resumed), lora_vector(full), atol=1e-6, rtol=1e-5)
    for a, b in zip(resumed.metrics, full.metrics):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3]


def test_stop_flag_saves_checkpoint_and_lora(tmp_path):
    calls = []
    t = make_trainer(tmp_path, iterations=10)
    t.should_stop = lambda: len(t.metrics) >= 1
    t.on_event = calls.append
    res = t.run()
    assert res.stopped and t.iteration_done == 1
    assert os.path.isfile(tmp_path / "run" / "checkpoint" / "state.pt")
    assert os.path.isfile(res.lora_path)
    assert [e["type"] for e in calls][-1] == "done"
    assert "iteration" in [e["type"] for e in calls] and "checkpoint" in [e["type"] for e in calls]


def test_exported_lora_reproduces_trained_model(tmp_path):
    from densegrpo_core.models.lora import inject_lora, load_lora, read_lora_metadata

    t = make_trainer(tmp_path, iterations=1)
    res = t.run()
    meta = read_lora_metadata(res.lora_path)
    assert meta["advantage_mode"] == "dense_grpo" and int(meta["iteration"]) == 1
    pipe, _, _ = load_pipeline("toy")
    inject_lora(pipe.model, "toy", rank=4, alpha=8)
    load_lora(res.lora_path, pipe.model)
    x, tau = torch.randn(2, *pipe.latent_shape), torch.tensor([0.5, 0.7])
    cond = pipe.encode(["a red circle on a white background"] * 2)
    torch.testing.assert_close(pipe.model(x, tau, cond), t.model(x, tau, cond))


def test_resume_with_other_mode_is_refused(tmp_path):
    make_trainer(tmp_path, iterations=1).run()
    other = make_trainer(tmp_path, advantage_mode="flow_grpo", iterations=2)
    with pytest.raises(ValueError, match="advantage_mode"):
        other.load_checkpoint(str(tmp_path / "run" / "checkpoint"))


@pytest.mark.parametrize(
    "field, value, msg",
    [
        ("group_size", 1, "group_size must be >= 2"),
        ("advantage_mode", "ppo", "unknown advantage mode"),
        ("dtype", "fp8", "dtype must be"),
    ],
)
def test_bad_config_is_rejected(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**{field: value})


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="unknown config keys \\['learning_rate'\\]"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_psi_of_wrong_length_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="psi has 2 values but the sampling grid has 4 steps"):
        make_trainer(tmp_path, psi=[0.5, 0.5])


def test_training_continues_from_an_exported_lora(tmp_path):
    first = make_trainer(tmp_path, "first", iterations=1)
    first.run()
    second = make_trainer(tmp_path, "second", iterations=1, init_lora=first.lora_path)
    torch.testing.assert_close(lora_vector(second), lora_vector(first))


def test_bf16_autocast_iteration_trains_with_finite_stats(tmp_path):
    m = make_trainer(tmp_path, dtype="bfloat16").iteration()
    assert m["optimizer_steps"] >= 1
    assert all(math.isfinite(m[k]) for k in ("loss", "kl", "ratio_mean", "grad_norm"))


def test_training_grid_defaults_to_the_sd3_scheduler_grid(tmp_path):
    from densegrpo_core.method.schedule import sd3_scheduler_grid

    t = make_trainer(tmp_path)
    torch.testing.assert_close(t.tau, sd3_scheduler_grid(4, t.shift))
    assert t.tau[-2].item() < 0.02  # the last step is tiny, as in Flow-GRPO


def test_shifted_linspace_grid_is_an_option(tmp_path):
    from densegrpo_core.method.schedule import shifted_linspace_grid

    t = make_trainer(tmp_path, grid="shifted_linspace")
    torch.testing.assert_close(t.tau, shifted_linspace_grid(4, t.shift))


def test_explicit_grid_trains_on_those_flow_times_and_records_them(tmp_path):
    from densegrpo_core.models.lora import read_lora_metadata

    grid = [1.0, 0.8, 0.5, 0.1, 0.0]
    t = make_trainer(tmp_path, grid=grid, iterations=1)
    torch.testing.assert_close(t.tau, torch.tensor(grid))
    t.run()
    meta = read_lora_metadata(t.lora_path)
    assert meta["grid"] == "explicit" and json.loads(meta["sigmas"]) == pytest.approx(grid)


def test_explicit_grid_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match="grid has 4 flow times but steps = 4 needs 5"):
        TrainConfig(steps=4, grid=[1.0, 0.5, 0.2, 0.0])
    with pytest.raises(ValueError, match="grid must be one of sd3, shifted_linspace"):
        TrainConfig(grid="karras")


def test_psi_file_from_another_grid_is_refused(tmp_path):
    from densegrpo_core.method.schedule import Psi, shifted_linspace_grid

    path = tmp_path / "psi.json"
    Psi([0.7] * 4, tau=shifted_linspace_grid(4).tolist(), meta={"source": "calibration"}).save(path)
    with pytest.raises(ValueError, match="used on the training grid"):
        make_trainer(tmp_path, psi=str(path))


def test_a_batch_never_repeats_a_prompt(tmp_path):
    t = make_trainer(tmp_path, prompts_per_iteration=6)
    for _ in range(20):
        prompts, groups = t._draw_prompts()
        texts = prompts[:: t.config.group_size]
        assert len(set(texts)) == 6
        assert groups.tolist() == [g for g in range(6) for _ in range(t.config.group_size)]


def test_duplicate_prompt_texts_form_one_group(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "dup"), **{**SMALL, "prompts_per_iteration": 2})
    pipe, _, _ = load_pipeline("toy")
    t = Trainer(
        cfg,
        pipe,
        get_reward("toy"),
        ["a red circle on a white background"] * 3 + ["a blue square on a black background"],
    )
    assert t.prompts == ["a red circle on a white background", "a blue square on a black background"]
    with pytest.raises(ValueError, match="exceeds the 2 distinct training prompts"):
        Trainer(
            TrainConfig(out_dir=str(tmp_path / "dup3"), **{**SMALL, "prompts_per_iteration": 3}),
            pipe,
            get_reward("toy"),
            t.prompts,
        )


def test_the_trainer_asks_the_mode_record_for_ode_branches_and_latents(tmp_path, monkeypatch):
    import dataclasses

    from densegrpo_core.method import advantages

    rec, seen = advantages.ADVANTAGE_MODE_RECORDS["flow_grpo"], []

    def advantage(R, groups, latents, global_std):
        seen.append(latents)
        return rec.advantage(R, groups, latents, global_std)

    fake = dataclasses.replace(rec, needs_ode_branches=True, needs_latents=True, advantage=advantage)
    monkeypatch.setitem(advantages.ADVANTAGE_MODE_RECORDS, "flow_grpo", fake)
    m = make_trainer(tmp_path, advantage_mode="flow_grpo").iteration()
    assert m["nfe_per_trajectory"] == 4 * 5 / 2 and "dR_mean" in m  # the fused rollout, dense statistics
    assert seen[0] is not None and seen[0].shape[:2] == (6, 5)  # the gathered latents reached the mode


# ---------------------------------------------------------------- the SDE window (docs/method.md §10)
def test_window_iteration_trains_only_window_steps_at_the_predicted_nfe(tmp_path):
    from densegrpo_core.method.rollout import predicted_nfe

    m = make_trainer(tmp_path, steps=6, sde_window=2).iteration()
    start = m["sde_window_start"]
    assert m["sde_window_end"] == start + 2 and 0 <= start <= 1  # Flow-GRPO-Fast's range (0, T//2)
    assert m["trained_steps"] == [start, start + 1]
    assert m["nfe_per_trajectory"] == predicted_nfe(6, window=(start, 2)) < predicted_nfe(6)


def test_window_composes_with_n_step_completions(tmp_path):
    from densegrpo_core.method.rollout import predicted_nfe

    m = make_trainer(tmp_path, steps=6, sde_window=3, ode_steps=2).iteration()
    assert m["nfe_per_trajectory"] == predicted_nfe(6, 2, window=(m["sde_window_start"], 3)) == 6 + 3


def test_window_with_flow_grpo_samples_the_chain_only(tmp_path):
    m = make_trainer(tmp_path, steps=6, sde_window=2, advantage_mode="flow_grpo").iteration()
    assert m["nfe_per_trajectory"] == 6 and len(m["trained_steps"]) == 2


def test_window_steps_compose_with_train_fraction(tmp_path):
    m = make_trainer(tmp_path, steps=4, sde_window=2, sde_window_range=(2, 4)).iteration()
    assert (m["sde_window_start"], m["trained_steps"]) == (2, [2])  # ⌊0.99·4⌋ = 3: step 3 stays untrained


def test_sliding_window_moves_over_iterations(tmp_path):
    t = make_trainer(tmp_path, steps=4, sde_window=1, sde_window_schedule="sliding", sde_window_every=1)
    assert [t.iteration()["sde_window_start"] for _ in range(4)] == [0, 1, 2, 0]  # range (0, T-1)


def test_window_settings_do_not_change_the_hash_of_a_run_without_window():
    assert TrainConfig(sde_window_schedule="sliding").hash() == TrainConfig().hash()
    assert TrainConfig(sde_window=2).hash() != TrainConfig().hash()


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("sde_window", -1, "sde_window must be an integer in"),
        ("sde_window", 11, "sde_window must be an integer in"),
        ("sde_window_schedule", "cyclic", "sde_window_schedule must be one of"),
        ("sde_window_stride", 0, "sde_window_stride must be"),
        ("sde_window_every", 0, "sde_window_every must be"),
        ("sde_window_range", (3, 2), "sde_window_range must satisfy"),
        ("sde_window_range", (0, 11), "sde_window_range must satisfy"),
    ],
)
def test_bad_window_setting_is_rejected_by_name(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**{field: value})


def test_window_range_shorter_than_the_window_is_rejected():
    with pytest.raises(ValueError, match="shorter than sde_window"):
        TrainConfig(sde_window=3, sde_window_range=(0, 2))


def test_resume_with_a_window_continues_the_same_curves(tmp_path):
    full = make_trainer(tmp_path, "full", iterations=3, sde_window=2)
    full.run()
    part = make_trainer(tmp_path, "part", iterations=2, sde_window=2)
    part.run()
    resumed = make_trainer(tmp_path, "part", iterations=3, sde_window=2)
    resumed.load_checkpoint(str(tmp_path / "part" / "checkpoint"))
    resumed.run()
    assert [m["sde_window_start"] for m in resumed.metrics] == [m["sde_window_start"] for m in full.metrics]
    torch.testing.assert_close(lora_vector(resumed), lora_vector(full), atol=1e-6, rtol=1e-5)


def test_any_64_bit_seed_trains(tmp_path):
    # ComfyUI seeds go up to 2**64 - 1; the per-rank noise and window seeds derived from them wrap, not overflow
    res = make_trainer(tmp_path, seed=2**64 - 1, iterations=1, sde_window=2).run()
    assert [m["iteration"] for m in res.metrics] == [1]
