"""The work function of a background training job on the toy model: LoRA files, plots, stop, resume."""

import os
import threading
from dataclasses import dataclass, field

import pytest

from densegrpo_core.jobs.training_work import lora_file_names, training_work
from densegrpo_core.models.lora import read_lora_metadata
from densegrpo_core.models.pipeline import load_pipeline
from densegrpo_core.rewards import get_reward
from densegrpo_core.training.trainer import TrainConfig

SMALL = dict(
    steps=3,
    prompts_per_iteration=1,
    group_size=2,
    train_batch=2,
    lora_rank=2,
    lora_alpha=4,
    eval_every=0,
    save_every=1,
    iterations=2,
)


@dataclass
class Job:
    folder: str


@dataclass
class Context:
    """What JobManager hands to a work function: the job, an event sink and the stop flag."""

    job: Job
    events: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def emit(self, event):
        self.events.append(event)

    def should_stop(self):
        return self.stop.is_set()


def run_work(tmp_path, folder="job", ctx=None, **kw):
    pipe, prompts, _ = load_pipeline("toy")
    cfg = TrainConfig(out_dir="unused", **{**SMALL, **kw.pop("cfg", {})})
    work = training_work(
        cfg,
        pipe,
        get_reward("toy"),
        prompts[:3],
        lora_dir=str(tmp_path / "loras"),
        lora_name="my_lora",
        sample_prompts=prompts[:2],
        **kw,
    )
    ctx = ctx or Context(Job(str(tmp_path / folder)))
    os.makedirs(ctx.job.folder, exist_ok=True)
    work(ctx)
    return ctx


def test_every_checkpoint_writes_a_new_numbered_lora_and_the_latest(tmp_path):
    ctx = run_work(tmp_path)
    names = sorted(os.listdir(tmp_path / "loras"))
    assert names == ["my_lora_00001.safetensors", "my_lora_00002.safetensors", "my_lora_latest.safetensors"]
    assert read_lora_metadata(tmp_path / "loras" / "my_lora_latest.safetensors")["iteration"] == "2"
    loras = [e for e in ctx.events if e["type"] == "lora"]
    assert [e["iteration"] for e in loras] == [1, 2]


def test_checkpoints_leave_status_plots_in_the_job_folder(tmp_path):
    ctx = run_work(tmp_path)
    for name in ("reward_curve.png", "dense_rewards.png", "samples.png", "metrics.jsonl"):
        assert os.path.isfile(os.path.join(ctx.job.folder, name)), name
    assert os.path.isdir(os.path.join(ctx.job.folder, "checkpoint"))


def test_a_stop_request_ends_the_work_with_a_saved_lora(tmp_path):
    ctx = Context(Job(str(tmp_path / "job")))
    ctx.stop.set()
    run_work(tmp_path, ctx=ctx, cfg={"iterations": 5})
    assert os.path.isfile(tmp_path / "loras" / "my_lora_latest.safetensors")
    assert not [e for e in ctx.events if e["type"] == "iteration"]


def test_resuming_continues_the_iteration_count(tmp_path):
    first = run_work(tmp_path, "a", cfg={"iterations": 1})
    second = run_work(
        tmp_path, "b", cfg={"iterations": 2}, resume_checkpoint=os.path.join(first.job.folder, "checkpoint")
    )
    assert [e["iteration"] for e in second.events if e["type"] == "iteration"] == [2]


@pytest.mark.parametrize("name", ["../x", "a/b", "", "..", ".hidden"])
def test_lora_names_that_could_leave_the_folder_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="LoRA name"):
        lora_file_names(str(tmp_path), name, 1)
