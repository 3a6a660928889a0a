"""The GRPO trainer on the shipped toy model: iteration contents, KL reference, resume, stop, export."""
import json
import math
import os

import pytest
import torch

from densegrpo_core.pipeline import load_pipeline
from densegrpo_core.rewards import get_reward
from densegrpo_core.trainer import TrainConfig, Trainer

SMALL = dict(steps=4, prompts_per_iteration=2, group_size=3, train_batch=3, lora_rank=4, lora_alpha=8,
             eval_every=0, save_every=0, eval_seeds=(0,), eval_steps=4, lr=1e-3)


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
    assert m["trained_steps"] == [0, 1, 2]          # ⌊0.99·4⌋ = 3: the last step is not trained
    assert m["optimizer_steps"] >= 1


def test_flow_grpo_iteration_samples_the_sde_chain_only(tmp_path):
    m = make_trainer(tmp_path, advantage_mode="flow_grpo").iteration()
    assert m["nfe_per_trajectory"] == 4 and "dR_mean" not in m


def test_first_update_is_on_policy_with_zero_kl(tmp_path):
    t = make_trainer(tmp_path, train_batch=6, inner_epochs=1)   # one minibatch: no update before the loss
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
    from densegrpo_core.lora import inject_lora, load_lora, read_lora_metadata
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


@pytest.mark.parametrize("field, value, msg", [("group_size", 1, "group_size must be >= 2"),
                                               ("advantage_mode", "ppo", "unknown advantage mode"),
                                               ("dtype", "fp8", "dtype must be")])
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
