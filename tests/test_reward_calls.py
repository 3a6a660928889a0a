"""Reward calls (rewards/calls.py): every output checked, every failure named by the reward and the call, and
a reward that blocks ends the iteration after reward_timeout_s with the run resumable."""

import threading
import time

import numpy as np
import pytest
import torch

from densegrpo_core.models.pipeline import load_pipeline
from densegrpo_core.rewards import (
    CheckedReward,
    RewardCallError,
    RewardOutputError,
    RewardTimeoutError,
    WeightedReward,
    call_reward,
    get_reward,
)
from densegrpo_core.training.trainer import TrainConfig, Trainer

IMAGES = torch.full((4, 8, 8, 3), 0.5)
PROMPTS = ["a", "b", "c", "d"]


def returning(value):
    def reward(images, prompts):
        return value

    return reward


@pytest.mark.parametrize(
    "value, msg",
    [
        (None, "returned None"),
        ("0.5", "returned a str"),
        ({"score": 1.0}, "returned a dict"),
        (["a", "b", "c", "d"], "returned a list that is not numbers"),
        (torch.ones(3), "returned 3 scores for 4 images"),
        (torch.ones(4, 2), "returned 8 scores for 4 images"),
        (torch.ones(1, 4), r"returned scores of shape \(1, 4\)"),
        (torch.ones(2, 2), r"returned scores of shape \(2, 2\)"),
        (torch.ones(4, dtype=torch.bool), "returned torch.bool scores"),
        (torch.tensor([0.1, float("nan"), 0.3, 0.4]), r"returned non-finite scores for 1 of 4 images \(1: nan\)"),
        (torch.tensor([0.1, 0.2, float("inf"), 0.4]), r"returned non-finite scores for 1 of 4 images \(2: inf\)"),
    ],
)
def test_a_bad_reward_output_is_named_with_the_reward_and_the_call(value, msg):
    reward = CheckedReward(returning(value), "iteration 3")
    with pytest.raises(RewardOutputError, match=rf"reward 'reward' {msg}.*\(iteration 3, reward call 1, 4 images\)"):
        reward(IMAGES, PROMPTS)


@pytest.mark.parametrize(
    "value",
    [
        [0.1, 0.2, 0.3, 0.4],
        np.array([0.1, 0.2, 0.3, 0.4]),
        torch.tensor([[0.1], [0.2], [0.3], [0.4]]),
        torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64),
    ],
)
def test_scores_as_a_list_array_or_column_become_a_float32_vector(value):
    scores = call_reward(returning(value), IMAGES, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    torch.testing.assert_close(scores, torch.tensor([0.1, 0.2, 0.3, 0.4]))


def test_a_reward_that_raises_is_named_with_its_exception_and_the_call():
    def broken(images, prompts):
        return 1 / 0

    msg = r"reward 'custom' raised ZeroDivisionError: division by zero \(iteration 2, 4 images\)"
    with pytest.raises(RewardCallError, match=msg) as e:
        call_reward(broken, IMAGES, PROMPTS, name="custom", where="iteration 2")
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_the_failing_term_of_a_weighted_reward_is_named():
    good = returning(torch.ones(4))
    reward = WeightedReward({"good": (1.0, good), "bad": (0.5, returning(None))})
    with pytest.raises(RewardOutputError, match=r"reward 'bad' returned None.*\(iteration 1, reward call 1"):
        CheckedReward(reward, "iteration 1")(IMAGES, PROMPTS)

    def boom(images, prompts):
        raise RuntimeError("model file truncated")

    reward = WeightedReward({"good": (1.0, good), "boom": (0.5, boom)})
    with pytest.raises(RewardCallError, match="reward term 'boom' raised RuntimeError: model file truncated"):
        CheckedReward(reward, "iteration 1")(IMAGES, PROMPTS)


def test_images_that_are_not_finite_are_the_models_fault_not_the_rewards():
    images = IMAGES.clone()
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="the images given to reward 'toy' .* are not valid: images must be finite"):
        call_reward(get_reward("toy"), images, PROMPTS)


def test_a_blocking_reward_ends_in_the_time_limit_with_its_name():
    release = threading.Event()

    def stuck(images, prompts):
        release.wait(60)
        return torch.ones(len(prompts))

    start = time.monotonic()
    msg = r"reward 'stuck' did not return within reward_timeout_s = 1 s \(iteration 5, 4 images\)"
    with pytest.raises(RewardTimeoutError, match=msg):
        call_reward(stuck, IMAGES, PROMPTS, name="stuck", where="iteration 5", timeout_s=1)
    assert time.monotonic() - start < 10
    release.set()


def test_a_timed_reward_runs_with_the_callers_grad_mode():
    seen = {}

    def reward(images, prompts):
        seen["grad"] = torch.is_grad_enabled()
        seen["thread"] = threading.current_thread()
        return torch.ones(len(prompts))

    with torch.no_grad():
        call_reward(reward, IMAGES, PROMPTS, timeout_s=30)
    assert seen["grad"] is False and seen["thread"] is not threading.current_thread()


def test_without_a_time_limit_the_reward_runs_in_the_callers_thread():
    seen = {}

    def reward(images, prompts):
        seen["thread"] = threading.current_thread()
        return torch.ones(len(prompts))

    call_reward(reward, IMAGES, PROMPTS, timeout_s=None)
    assert seen["thread"] is threading.current_thread()


# ------------------------------------------------------------------------------------------- in the trainer
SMALL = dict(
    steps=3,
    prompts_per_iteration=2,
    group_size=2,
    train_batch=4,
    lora_rank=2,
    lora_alpha=4,
    eval_every=0,
    eval_seeds=(0,),
    eval_steps=3,
)


def toy_trainer(tmp_path, reward, **kw):
    pipe, train_prompts, _ = load_pipeline("toy")
    config = TrainConfig(out_dir=str(tmp_path / "run"), **{**SMALL, **kw})
    return Trainer(config, pipe, reward, train_prompts)


def test_a_reward_returning_none_in_training_names_the_iteration(tmp_path):
    trainer = toy_trainer(tmp_path, returning(None), iterations=1)
    with pytest.raises(RewardOutputError, match=r"returned None.*\(iteration 1, reward call 1, \d+ images\)"):
        trainer.run()


def test_a_reward_that_blocks_fails_its_iteration_and_the_run_resumes_from_the_last_checkpoint(tmp_path):
    toy = get_reward("toy")
    calls_per_iteration = []
    release = threading.Event()

    def blocks_in_iteration_2(images, prompts):
        if len(calls_per_iteration) >= 1:
            release.wait(120)
        return toy(images, prompts)

    checkpoints = []
    trainer = toy_trainer(tmp_path, blocks_in_iteration_2, iterations=3, save_every=1, reward_timeout_s=1)
    trainer.on_event = lambda e: checkpoints.append(e["path"]) if e["type"] == "checkpoint" else None
    original_iteration = trainer.iteration

    def iteration():
        m = original_iteration()
        calls_per_iteration.append(1)
        return m

    trainer.iteration = iteration
    start = time.monotonic()
    with pytest.raises(RewardTimeoutError, match=r"reward 'blocks_in_iteration_2' .*\(iteration 2, reward call 1,"):
        trainer.run()
    assert time.monotonic() - start < 60
    release.set()
    assert trainer.iteration_done == 1 and len(checkpoints) == 1
    resumed = toy_trainer(tmp_path, toy, iterations=2, save_every=1)
    resumed.load_checkpoint(checkpoints[0])
    assert resumed.iteration_done == 1
    assert resumed.run().metrics[-1]["iteration"] == 2
