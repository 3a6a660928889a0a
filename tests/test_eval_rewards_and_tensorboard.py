"""Held-out rewards at every evaluation (`eval_rewards`) and the optional TensorBoard log (`logger`)."""

import json
import os

import pytest

from densegrpo_core.models.pipeline import load_pipeline
from densegrpo_core.rewards import get_reward
from densegrpo_core.training.trainer import TrainConfig, Trainer


def toy_run(out, **kw):
    config = TrainConfig(
        out_dir=str(out),
        steps=3,
        iterations=2,
        prompts_per_iteration=2,
        group_size=2,
        lora_rank=4,
        lora_alpha=8,
        eval_every=1,
        eval_seeds=(0,),
        save_every=0,
        **kw,
    )
    pipe, train, evals = load_pipeline("toy")
    return Trainer(config, pipe, get_reward("toy"), train, evals).run()


def test_every_named_reward_scores_every_evaluation_and_goes_into_the_metrics(tmp_path):
    res = toy_run(tmp_path, eval_rewards=("jpeg_incompressibility", "jpeg_compressibility"))
    assert [e["iteration"] for e in res.evals] == [0, 1, 2]
    for e in res.evals:
        assert set(e["eval_rewards"]) == {"jpeg_incompressibility", "jpeg_compressibility"}
        assert all(isinstance(v, float) for v in e["eval_rewards"].values())
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["eval"]["eval_rewards"] == res.evals[i + 1]["eval_rewards"] for i, m in enumerate(lines)] == [True] * 2


def test_an_unknown_eval_reward_is_named(tmp_path):
    with pytest.raises(ValueError, match="eval_rewards: 'no_such_reward'"):
        toy_run(tmp_path, eval_rewards=("no_such_reward",))


def test_eval_rewards_in_toml_take_a_list_or_a_comma_string():
    assert TrainConfig(eval_rewards="aesthetic,clipscore").eval_rewards == ("aesthetic", "clipscore")
    with pytest.raises(ValueError, match="eval_rewards must be reward names"):
        TrainConfig(eval_rewards=("aesthetic", 3))


def test_tensorboard_reads_the_scalars_rewards_sign_counts_and_images(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    toy_run(tmp_path, eval_rewards=("jpeg_incompressibility",), logger="tensorboard")
    log = EventAccumulator(os.path.join(tmp_path, "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    log.Reload()
    scalars, images = set(log.Tags()["scalars"]), set(log.Tags()["images"])
    assert {"train/reward_mean", "train/kl", "train/clip_frac", "train/zero_spread_groups"} <= scalars
    assert {"eval/reward", "eval/jpeg_incompressibility", "dR_pos/step_0", "dR_neg/step_2"} <= scalars
    assert [e.step for e in log.Scalars("train/reward_mean")] == [1, 2]
    assert [e.step for e in log.Scalars("eval/jpeg_incompressibility")] == [0, 1, 2]
    assert images == {"eval/samples"}


def test_an_unknown_logger_is_named():
    with pytest.raises(ValueError, match="logger must be one of none, tensorboard"):
        TrainConfig(logger="wandb")
