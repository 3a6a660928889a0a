"""The background job manager: queueing per device, stop, failure, records on disk, resume with the real Trainer.

Threads are synchronised with Events only; every wait has a generous timeout so a bug fails instead of hanging.
"""

import collections
import json
import os
import threading

import pytest

from densegrpo_core.jobs import manager as jobs
from densegrpo_core.jobs.manager import Job, JobManager, JobState

WAIT = 30.0  # a safety net against hangs, never a timing assertion


class Recorder:
    """Listener that keeps every (job_id, event) and sets an Event when a job reaches a state."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()
        self._reached = collections.defaultdict(threading.Event)

    def __call__(self, job_id, event):
        self.events.append((job_id, event))
        if event["type"] == "state":
            self.reached(job_id, event["state"]).set()

    def reached(self, job_id, state) -> threading.Event:
        with self._lock:
            return self._reached[(job_id, state)]

    def states(self, job_id):
        return [e["state"] for j, e in self.events if j == job_id and e["type"] == "state"]


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def manager(tmp_path, rec):
    m = JobManager(str(tmp_path / "jobs"), on_event=rec)
    yield m
    m.shutdown(timeout=WAIT)


def blocking(started: threading.Event, release: threading.Event, log=None, tag=None):
    """A work function that signals its start and returns once released."""

    def work(ctx):
        if log is not None:
            log.append(tag)
        started.set()
        assert release.wait(WAIT)

    return work


def until_stopped(rec: Recorder, started: threading.Event):
    """A work function that signals its start and returns once its job is asked to stop."""

    def work(ctx):
        started.set()
        assert rec.reached(ctx.job.id, "stopping").wait(WAIT)

    return work


def test_job_runs_and_finishes_with_its_events_recorded(manager, rec):
    def work(ctx):
        ctx.emit({"type": "eval", "iteration": 0, "reward_mean": 0.1})
        for i in (1, 2):
            ctx.emit({"type": "iteration", "iteration": i, "reward_mean": 0.5 * i, "rewards": [[1.0, 2.0]]})
        ctx.emit({"type": "lora", "path": "/loras/a_00002.safetensors", "iteration": 2})

    job = manager.wait(manager.submit("a", work, total=2).id, WAIT)
    assert job.state is JobState.FINISHED and job.iteration == 2 and job.error is None
    assert [m["reward_mean"] for m in job.metrics] == [0.5, 1.0]
    assert "rewards" not in job.metrics[-1] and job.latest["iteration"]["rewards"] == [[1.0, 2.0]]
    assert job.evals == [{"iteration": 0, "reward_mean": 0.1}]
    assert job.loras == ["/loras/a_00002.safetensors"]
    assert rec.states(job.id) == ["queued", "running", "finished"]
    forwarded = [e for j, e in rec.events if e["type"] == "iteration"]
    assert [e["job_id"] for e in forwarded] == [job.id, job.id] and forwarded[0]["rewards"] == [[1.0, 2.0]]
    assert job.created <= job.started <= job.finished


def test_jobs_on_one_device_run_one_at_a_time_in_submit_order(manager):
    order, started, release = [], [threading.Event() for _ in range(3)], [threading.Event() for _ in range(3)]
    ids = [manager.submit(t, blocking(s, r, order, t), total=1).id for t, s, r in zip("abc", started, release)]
    assert started[0].wait(WAIT)
    assert [manager.get(i).state for i in ids] == [JobState.RUNNING, JobState.QUEUED, JobState.QUEUED]
    release[0].set()
    assert started[1].wait(WAIT)
    assert manager.get(ids[2]).state is JobState.QUEUED
    release[1].set()
    release[2].set()
    assert [manager.wait(i, WAIT).state for i in ids] == [JobState.FINISHED] * 3
    assert order == ["a", "b", "c"]


def test_jobs_on_different_devices_run_concurrently(manager):
    started = {"cpu": threading.Event(), "cuda:1": threading.Event()}

    def work(ctx):  # each finishes only once the other has started: one at a time would fail both
        started[ctx.job.device].set()
        other = "cuda:1" if ctx.job.device == "cpu" else "cpu"
        if not started[other].wait(WAIT):
            raise RuntimeError("the other device's job never started")

    ids = [manager.submit(d, work, device=d, total=1).id for d in started]
    assert [manager.wait(i, WAIT).state for i in ids] == [JobState.FINISHED, JobState.FINISHED]


def test_stopping_a_queued_job_never_runs_it(manager, rec):
    started, release, ran = threading.Event(), threading.Event(), []
    first = manager.submit("first", blocking(started, release), total=1)
    second = manager.submit("second", lambda ctx: ran.append(ctx.job.id), total=1)
    assert started.wait(WAIT)
    assert manager.stop(second.id).state is JobState.STOPPED
    release.set()
    manager.wait(first.id, WAIT)
    assert manager.wait(second.id, WAIT).state is JobState.STOPPED
    assert ran == [] and second.started is None
    assert rec.states(second.id) == ["queued", "stopped"]


def test_stopping_a_running_job_goes_through_stopping_and_the_work_sees_it(manager, rec):
    started, release, seen = threading.Event(), threading.Event(), []

    def work(ctx):
        seen.append(ctx.should_stop())
        started.set()
        assert release.wait(WAIT)
        seen.append(ctx.should_stop())

    job = manager.submit("a", work, total=5)
    assert started.wait(WAIT)
    assert manager.stop(job.id).state is JobState.STOPPING
    release.set()
    assert manager.wait(job.id, WAIT).state is JobState.STOPPED
    assert seen == [False, True]
    assert rec.states(job.id) == ["queued", "running", "stopping", "stopped"]


def test_stop_after_the_last_iteration_still_finishes(manager, rec):
    started = threading.Event()

    def work(ctx):
        ctx.emit({"type": "iteration", "iteration": 2, "reward_mean": 0.0})
        until_stopped(rec, started)(ctx)

    job = manager.submit("a", work, total=2)
    assert started.wait(WAIT)
    manager.stop(job.id)
    assert manager.wait(job.id, WAIT).state is JobState.FINISHED
    assert rec.states(job.id) == ["queued", "running", "stopping", "finished"]


def test_failing_work_fails_the_job_with_its_message_and_keeps_earlier_loras(manager):
    def work(ctx):
        ctx.emit({"type": "lora", "path": "/loras/a_00001.safetensors", "iteration": 1})
        raise ValueError("reward is NaN\nsecond line")

    job = manager.wait(manager.submit("a", work, total=3).id, WAIT)
    assert job.state is JobState.FAILED
    assert job.error == "ValueError: reward is NaN"
    assert "Traceback" in job.traceback and "second line" in job.traceback
    assert job.loras == ["/loras/a_00001.safetensors"]


def test_a_failed_job_does_not_block_the_next_on_its_device(manager):
    def fail(ctx):
        raise RuntimeError("boom")

    first = manager.submit("a", fail, total=1)
    second = manager.submit("b", lambda ctx: None, total=1)
    assert manager.wait(first.id, WAIT).state is JobState.FAILED
    assert manager.wait(second.id, WAIT).state is JobState.FINISHED


def test_listener_exceptions_do_not_break_the_job(tmp_path, caplog):
    def listener(job_id, event):
        raise OSError("websocket closed")

    m = JobManager(str(tmp_path), on_event=listener)
    job = m.wait(m.submit("a", lambda ctx: ctx.emit({"type": "iteration", "iteration": 1}), total=1).id, WAIT)
    assert job.state is JobState.FINISHED and job.iteration == 1
    assert "the event listener failed" in caplog.text
    m.shutdown()


def test_to_dict_is_json_safe_and_small_unless_full(manager):
    def work(ctx):
        ctx.emit({"type": "iteration", "iteration": 1, "reward_mean": float("nan"), "rewards": [[0.5]]})
        raise ValueError("x")

    job = manager.wait(manager.submit("a", work, total=2, meta={"mode": "dense_grpo"}).id, WAIT)
    small, full = job.to_dict(), job.to_dict(full=True)
    json.dumps(small, allow_nan=False)
    json.dumps(full, allow_nan=False)
    assert small["state"] == "failed" and small["meta"] == {"mode": "dense_grpo"}
    assert small["metrics_count"] == 1 and small["last_metric"] == {"iteration": 1, "reward_mean": None}
    assert not {"metrics", "evals", "latest", "traceback"} & set(small)
    assert full["latest"]["iteration"]["rewards"] == [[0.5]] and "ValueError" in full["traceback"]


def test_metrics_keep_only_the_last_records(manager, monkeypatch):
    from densegrpo_core.jobs import state as job_state

    monkeypatch.setattr(job_state, "MAX_RECORDS", 3)

    def work(ctx):
        for i in range(1, 6):
            ctx.emit({"type": "iteration", "iteration": i})

    job = manager.wait(manager.submit("a", work, total=5).id, WAIT)
    assert [m["iteration"] for m in job.metrics] == [3, 4, 5] and job.iteration == 5


def test_unknown_id_is_a_key_error_and_malformed_id_a_value_error(manager):
    with pytest.raises(KeyError, match="unknown job id"):
        manager.get("abcdef012345")
    for bad in ("../../etc", "ABCDEF012345", "abcdef01234", "", None):
        with pytest.raises(ValueError, match="malformed job id"):
            manager.get(bad)


def test_job_ids_are_short_and_folders_exist_at_submit(manager):
    started, release = threading.Event(), threading.Event()
    job = manager.submit("a", blocking(started, release), total=1)
    assert jobs.ID_RE.fullmatch(job.id) and os.path.isdir(job.folder)
    assert os.path.dirname(job.folder) == manager.root
    release.set()


def test_list_is_newest_first(manager):
    ids = [manager.submit(n, lambda ctx: None, total=1).id for n in "abc"]
    assert [j.id for j in manager.list()] == ids[::-1]


@pytest.mark.parametrize(
    "old, new",
    [
        ("finished", "running"),
        ("stopped", "running"),
        ("failed", "stopped"),
        ("queued", "finished"),
        ("running", "stopped"),
        ("stopping", "running"),
    ],
)
def test_illegal_transitions_raise(old, new):
    job = Job(id="abcdef012345", name="a", device="cpu", folder="/tmp/x", total=1, state=JobState(old))
    with pytest.raises(RuntimeError, match="illegal state change"):
        job.transition(JobState(new))
    assert job.state is JobState(old)


def test_job_json_records_the_state_and_loads_back(tmp_path, manager):
    job = manager.wait(
        manager.submit("a", lambda ctx: ctx.emit({"type": "iteration", "iteration": 1}), total=1).id, WAIT
    )
    with open(os.path.join(job.folder, "job.json")) as f:
        record = json.load(f)
    assert record["state"] == "finished" and record["iteration"] == 1
    (loaded,) = JobManager(manager.root).load_records()
    assert loaded.to_dict() == job.to_dict()


def test_load_records_marks_an_interrupted_running_job_failed(tmp_path, manager):
    started, release = threading.Event(), threading.Event()
    job = manager.submit("a", blocking(started, release), total=1)
    assert started.wait(WAIT)
    with open(os.path.join(job.folder, "job.json")) as f:
        assert json.load(f)["state"] == "running"
    restarted = JobManager(manager.root)
    (loaded,) = restarted.load_records()
    assert loaded.state is JobState.FAILED and loaded.error == "interrupted by a server restart"
    assert restarted.wait(job.id, 0).state is JobState.FAILED
    release.set()


def test_resumable_requires_a_stopped_or_failed_job_with_a_checkpoint(manager):
    def with_checkpoint(ctx):
        os.makedirs(os.path.join(ctx.job.folder, "checkpoint"))
        raise RuntimeError("out of memory")

    started, release = threading.Event(), threading.Event()
    finished = manager.submit("a", blocking(started, release), total=1)
    never_saved = manager.stop(manager.submit("b", lambda ctx: None, total=1).id)  # queued behind "a"
    failed = manager.submit("c", with_checkpoint, total=1)
    release.set()
    manager.wait(failed.id, WAIT)
    with pytest.raises(ValueError, match="only a stopped or failed job"):
        manager.resumable(finished.id)
    with pytest.raises(ValueError, match="no checkpoint"):
        manager.resumable(never_saved.id)
    assert manager.resumable(failed.id) == os.path.join(failed.folder, "checkpoint")


def test_shutdown_stops_running_and_queued_jobs_and_refuses_new_ones(tmp_path, rec):
    m = JobManager(str(tmp_path), on_event=rec)
    started, ran = threading.Event(), []
    running = m.submit("a", until_stopped(rec, started), total=3)
    queued = m.submit("b", lambda ctx: ran.append(1), total=1)
    assert started.wait(WAIT)
    m.shutdown(timeout=WAIT)
    assert running.state is JobState.STOPPED and queued.state is JobState.STOPPED and ran == []
    with pytest.raises(RuntimeError, match="shut down"):
        m.submit("c", lambda ctx: None, total=1)


def test_a_stopped_trainer_job_resumes_from_its_checkpoint(manager):
    from densegrpo_core.models.pipeline import load_pipeline
    from densegrpo_core.rewards import get_reward
    from densegrpo_core.training.trainer import TrainConfig, Trainer

    def train(resume_of=None, stop_after_first=False):
        def work(ctx):
            def on_event(event):
                ctx.emit(event)
                if stop_after_first and event["type"] == "iteration":
                    manager.stop(ctx.job.id)

            cfg = TrainConfig(
                out_dir=ctx.job.folder,
                iterations=3,
                save_every=1,
                steps=3,
                group_size=2,
                prompts_per_iteration=1,
                train_batch=2,
                lora_rank=2,
                lora_alpha=4,
                eval_every=0,
            )
            pipe, prompts, _ = load_pipeline("toy")
            trainer = Trainer(cfg, pipe, get_reward("toy"), prompts[:3], on_event=on_event, should_stop=ctx.should_stop)
            if resume_of:
                trainer.load_checkpoint(manager.resumable(resume_of))
            trainer.run()

        return work

    first = manager.wait(manager.submit("toy", train(stop_after_first=True), total=3).id, WAIT)
    assert first.state is JobState.STOPPED and first.iteration == 1, first.error
    assert os.path.isfile(os.path.join(first.folder, "checkpoint", "state.pt"))
    second = manager.submit(
        "toy", train(resume_of=first.id), total=3, resume_of=first.id, start_iteration=first.iteration
    )
    assert second.iteration == 1 and second.resumed_from == first.id
    second = manager.wait(second.id, WAIT)
    assert second.state is JobState.FINISHED, second.traceback
    assert [m["iteration"] for m in second.metrics] == [2, 3] and second.iteration == 3
    assert second.latest["done"]["stopped"] is False


# ---------------------------------------------------------------- duplicates
def blocking_work(release: threading.Event):
    def work(ctx):
        release.wait(WAIT)

    return work


def test_settings_key_ignores_dict_order_and_changes_with_any_setting():
    assert jobs.settings_key({"a": 1, "b": [1, 2]}) == jobs.settings_key({"b": [1, 2], "a": 1})
    assert jobs.settings_key({"a": 1, "b": [1, 2]}) != jobs.settings_key({"a": 1, "b": [1, 3]})


def test_submit_unique_returns_the_running_job_with_the_same_key(manager):
    release = threading.Event()
    first, created = manager.submit_unique("k1", "a", blocking_work(release), total=1)
    second, created_again = manager.submit_unique("k1", "a", blocking_work(release), total=1)
    release.set()
    assert created and not created_again and second is first
    assert len(manager.list()) == 1


def test_submit_unique_with_another_key_starts_a_second_job(manager):
    release = threading.Event()
    first, _ = manager.submit_unique("k1", "a", blocking_work(release), total=1)
    second, created = manager.submit_unique("k2", "a", blocking_work(release), total=1)
    release.set()
    assert created and second.id != first.id


def test_submit_unique_after_the_job_ended_starts_a_new_one(manager):
    first, _ = manager.submit_unique("k1", "a", lambda ctx: None, total=1)
    manager.wait(first.id, WAIT)
    second, created = manager.submit_unique("k1", "a", lambda ctx: None, total=1)
    assert created and second.id != first.id


def test_a_queued_duplicate_is_found_too(manager):
    release = threading.Event()
    manager.submit_unique("k1", "a", blocking_work(release), total=1)  # runs
    queued, _ = manager.submit_unique("k2", "b", blocking_work(release), total=1)  # waits for the device
    again, created = manager.submit_unique("k2", "b", blocking_work(release), total=1)
    release.set()
    assert queued.state in (JobState.QUEUED, JobState.RUNNING) and again is queued and not created


def test_seconds_per_iteration_and_eta_come_from_the_iteration_events(manager):
    done = threading.Event()
    seen = {}

    def work(ctx):
        for i in (1, 2, 3):
            ctx.emit({"type": "iteration", "iteration": i})
        seen.update(ctx.job.to_dict())
        done.set()

    job = manager.wait(manager.submit("a", work, total=10).id, WAIT)
    assert seen["sec_per_iteration"] is not None and seen["sec_per_iteration"] >= 0
    assert seen["eta_s"] == pytest.approx(seen["sec_per_iteration"] * 7)
    assert job.to_dict()["eta_s"] == 0.0


def test_events_carry_the_job_summary(rec, manager):
    job = manager.wait(
        manager.submit("a", lambda ctx: ctx.emit({"type": "iteration", "iteration": 1}), total=1).id, WAIT
    )
    (event,) = [e for j, e in rec.events if e["type"] == "iteration"]
    assert event["job"]["id"] == job.id and event["job"]["iteration"] == 1
