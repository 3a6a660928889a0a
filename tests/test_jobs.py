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


def failing(ctx):
    raise RuntimeError("boom")


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
    def with_checkpoint(ctx):  # a complete numbered checkpoint whose `checkpoint` link was never made
        from densegrpo_core.training.checkpoint import FILES

        os.makedirs(os.path.join(ctx.job.folder, "checkpoint-000003"))
        for name in FILES:
            open(os.path.join(ctx.job.folder, "checkpoint-000003", name), "w").close()
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
    assert manager.resumable(failed.id) == os.path.join(failed.folder, "checkpoint-000003")


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


def toy_training(manager, lora_dir, resume_of=None, stop_after=None, iterations=3):
    """The real training work (densegrpo_core.jobs.training_work) of a toy run; `stop_after` asks the job to
    stop after that iteration; `resume_of` continues that job's checkpoint."""
    from densegrpo_core.jobs.training_work import training_work
    from densegrpo_core.models.pipeline import load_pipeline
    from densegrpo_core.rewards import get_reward
    from densegrpo_core.training.trainer import TrainConfig

    cfg = TrainConfig(
        out_dir="(job folder)",
        iterations=iterations,
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
    work = training_work(
        cfg,
        pipe,
        get_reward("toy"),
        prompts[:3],
        lora_dir=str(lora_dir),
        lora_name="toy",
        resume_checkpoint=manager.resumable(resume_of) if resume_of else None,
        sample_prompts=prompts[:2],
    )

    def stopping_work(ctx):
        if stop_after is not None:
            emit = ctx.emit

            def emit_then_stop(event):
                emit(event)
                if event["type"] == "iteration" and event["iteration"] >= stop_after:
                    manager.stop(ctx.job.id)

            ctx.emit = emit_then_stop
        work(ctx)

    return stopping_work


def test_a_resumed_trainer_job_is_the_same_job_with_its_whole_curve(manager, tmp_path):
    first = manager.wait(manager.submit("toy", toy_training(manager, tmp_path, stop_after=1), total=3).id, WAIT)
    assert first.state is JobState.STOPPED and first.iteration == 1, first.error
    again = manager.submit("toy", toy_training(manager, tmp_path, resume_of=first.id), total=3, resume_of=first.id)
    assert again is first and [j.id for j in manager.list()] == [first.id]
    job = manager.wait(first.id, WAIT)
    assert job.state is JobState.FINISHED, job.traceback
    assert [m["iteration"] for m in job.metrics] == [1, 2, 3] and job.iteration == 3
    assert [r["iteration"] for r in job.resumes] == [1]
    assert job.latest["done"]["stopped"] is False


def test_a_resume_goes_through_the_states_again_and_tells_the_listener(manager, rec):
    job = manager.wait(manager.submit("a", failing, total=2).id, WAIT)

    def work(ctx):
        ctx.emit({"type": "resumed", "iteration": 0, "history": {"metrics": [], "evals": []}})
        ctx.emit({"type": "iteration", "iteration": 1})
        ctx.emit({"type": "iteration", "iteration": 2})

    manager.submit("a", work, total=2, resume_of=job.id)
    assert manager.wait(job.id, WAIT).state is JobState.FINISHED
    assert rec.states(job.id) == ["queued", "running", "failed", "queued", "running", "finished"]
    resumed = [e for j, e in rec.events if e["type"] == "resumed"]
    assert [(e["job_id"], e["iteration"]) for e in resumed] == [(job.id, 0)]


def test_a_resume_after_a_failure_replaces_the_iterations_after_the_checkpoint(manager):
    def fails_at_3(ctx):
        for i in (1, 2, 3):
            ctx.emit({"type": "iteration", "iteration": i, "reward_mean": 0.1 * i})
        raise RuntimeError("out of memory")

    def resumes_at_2(ctx):  # the checkpoint was written after iteration 2
        history = {"metrics": [{"iteration": i, "reward_mean": 0.1 * i} for i in (1, 2)], "evals": []}
        ctx.emit({"type": "resumed", "iteration": 2, "history": history})
        for i in (3, 4):
            ctx.emit({"type": "iteration", "iteration": i, "reward_mean": 1.0 * i})

    job = manager.wait(manager.submit("a", fails_at_3, total=4).id, WAIT)
    assert job.state is JobState.FAILED
    manager.submit("a", resumes_at_2, total=4, resume_of=job.id)
    job = manager.wait(job.id, WAIT)
    assert job.state is JobState.FINISHED and job.error is None and job.traceback is None
    assert [(m["iteration"], m["reward_mean"]) for m in job.metrics] == [(1, 0.1), (2, 0.2), (3, 3.0), (4, 4.0)]
    assert job.resumes[0]["iteration"] == 2


def test_a_repeated_iteration_replaces_the_earlier_record_even_without_a_resumed_event(manager):
    def work(ctx):
        for i in (1, 2, 3, 2, 3):
            ctx.emit({"type": "iteration", "iteration": i})

    job = manager.wait(manager.submit("a", work, total=3).id, WAIT)
    assert [m["iteration"] for m in job.metrics] == [1, 2, 3]


def test_only_a_stopped_or_failed_job_can_be_resumed(manager):
    release = threading.Event()
    running = manager.submit("a", blocking_work(release), total=1)
    with pytest.raises(ValueError, match="only a stopped or failed job can be resumed"):
        manager.submit("a", lambda ctx: None, total=1, resume_of=running.id)
    release.set()
    finished = manager.wait(running.id, WAIT)
    with pytest.raises(ValueError, match="is finished: only a stopped or failed job"):
        manager.submit("a", lambda ctx: None, total=1, resume_of=finished.id)
    assert finished.state is JobState.FINISHED


def test_resuming_a_deleted_job_is_a_clear_error(manager):
    job = manager.wait(manager.submit("a", failing, total=2).id, WAIT)
    manager.delete(job.id)
    with pytest.raises(KeyError, match="unknown job id"):
        manager.submit("a", lambda ctx: None, total=2, resume_of=job.id)


def test_the_record_keeps_the_whole_curve_and_the_resume_marks_across_a_restart(manager):
    def first(ctx):
        ctx.emit({"type": "eval", "iteration": 0, "reward_mean": 0.0, "eval_rewards": {"aesthetic": 5.0}})
        for i in (1, 2):
            ctx.emit({"type": "iteration", "iteration": i, "reward_mean": 0.1 * i, "dR_pos": [1, 2]})
        raise RuntimeError("boom")

    def second(ctx):
        metrics = [{"iteration": i, "reward_mean": 0.1 * i} for i in (1, 2)]
        evals = [{"iteration": 0, "reward_mean": 0.0, "eval_rewards": {"aesthetic": 5.0}}]
        ctx.emit({"type": "resumed", "iteration": 2, "history": {"metrics": metrics, "evals": evals}})
        ctx.emit({"type": "iteration", "iteration": 3, "reward_mean": 0.3, "dR_pos": [2, 2]})

    job = manager.wait(manager.submit("a", first, total=3).id, WAIT)
    manager.submit("a", second, total=3, resume_of=job.id)
    job = manager.wait(job.id, WAIT)
    (loaded,) = JobManager(manager.root).load_records()
    assert [(m["iteration"], m["reward_mean"]) for m in loaded.metrics] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert loaded.metrics[-1] == job.metrics[-1]  # the last one in full
    assert loaded.evals == [{"iteration": 0, "reward_mean": 0.0, "eval_rewards": {"aesthetic": 5.0}}]
    assert loaded.resumes == job.resumes and [r["iteration"] for r in loaded.resumes] == [2]
    assert loaded.to_dict() == job.to_dict()


def test_a_resumed_event_keeps_its_history_out_of_latest_and_events(manager, rec):
    history = {"metrics": [{"iteration": 1, "reward_mean": 0.5}], "evals": []}
    job = manager.wait(manager.submit("a", failing, total=2).id, WAIT)
    manager.submit(
        "a", lambda ctx: ctx.emit({"type": "resumed", "iteration": 1, "history": history}), total=2, resume_of=job.id
    )
    manager.wait(job.id, WAIT)
    assert "history" not in job.latest["resumed"]
    (event,) = [e for j, e in rec.events if e["type"] == "resumed"]
    assert "history" not in event and event["job"]["resumes"][0]["iteration"] == 1


def test_every_file_a_training_job_writes_into_its_folder_is_renamed_into_place(manager, tmp_path, monkeypatch):
    """A reader (the panel) or a kill never meets half a file: job.json, the plots and the samples are each
    written beside and renamed over (metrics.jsonl is the trainer's append-only log; checkpoint/ is swapped
    in whole by the trainer)."""
    real_replace, renamed = os.replace, set()

    def replace(src, dst):
        renamed.add(os.path.relpath(os.fspath(dst), manager.root))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    job = manager.wait(manager.submit("toy", toy_training(manager, tmp_path, iterations=2), total=2).id, WAIT)
    assert job.state is JobState.FINISHED, job.traceback
    files = {e for e in os.listdir(job.folder) if os.path.isfile(os.path.join(job.folder, e))}
    assert {"job.json", "reward_curve.png", "dense_rewards.png", "samples.png"} <= files
    assert files - {"metrics.jsonl"} <= {os.path.relpath(r, job.id) for r in renamed if r.startswith(job.id)}


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


# ------------------------------------------------------------------ delete
def test_delete_removes_an_ended_job_its_record_and_its_folder(manager, tmp_path):
    job = manager.wait(manager.submit("a", failing, total=1).id, WAIT)
    with open(os.path.join(job.folder, "metrics.jsonl"), "w") as f:
        f.write("{}\n")
    os.makedirs(os.path.join(job.folder, "checkpoint"))
    assert manager.delete(job.id) is job
    assert not os.path.exists(job.folder) and os.listdir(manager.root) == []
    with pytest.raises(KeyError, match="unknown job id"):
        manager.get(job.id)
    assert manager.list() == []


def test_delete_never_touches_the_jobs_lora_files(manager, tmp_path):
    lora = tmp_path / "loras" / "a_00001.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(b"lora")

    def work(ctx):
        ctx.emit({"type": "lora", "path": str(lora), "iteration": 1})

    job = manager.wait(manager.submit("a", work, total=1).id, WAIT)
    manager.delete(job.id)
    assert lora.read_bytes() == b"lora"


def test_a_deleted_job_stays_gone_after_a_restart(manager):
    kept, gone = (manager.wait(manager.submit(n, failing, total=1).id, WAIT) for n in "ab")
    manager.delete(gone.id)
    assert [j.id for j in JobManager(manager.root).load_records()] == [kept.id]


@pytest.mark.parametrize("state", ["queued", "running", "stopping"])
def test_deleting_an_active_job_is_refused_and_keeps_it(manager, rec, state):
    started, release = threading.Event(), threading.Event()
    first = manager.submit("first", blocking(started, release), total=5)
    queued = manager.submit("second", lambda ctx: None, total=1)
    assert started.wait(WAIT)
    job = {"queued": queued, "running": first, "stopping": first}[state]
    if state == "stopping":
        manager.stop(first.id)
    assert job.state.value == state
    with pytest.raises(jobs.JobActiveError, match=f"job {job.id} is {state}: stop it first"):
        manager.delete(job.id)
    release.set()
    assert manager.get(job.id) is job and os.path.isfile(os.path.join(job.folder, "job.json"))
    manager.wait(queued.id, WAIT)


def test_deleting_an_unknown_or_malformed_id_is_refused(manager):
    with pytest.raises(KeyError, match="unknown job id"):
        manager.delete("abcdef012345")
    for bad in ("../../etc", "..", "", None):
        with pytest.raises(ValueError, match="malformed job id"):
            manager.delete(bad)


def test_delete_tells_the_listener(manager, rec):
    job = manager.wait(manager.submit("a", failing, total=1).id, WAIT)
    manager.delete(job.id)
    assert rec.events[-1] == (job.id, {"type": "deleted", "job_id": job.id})


def test_a_job_folder_that_is_a_link_is_unlinked_not_followed(manager, tmp_path):
    job = manager.wait(manager.submit("a", failing, total=1).id, WAIT)
    elsewhere = tmp_path / "elsewhere"
    os.replace(job.folder, elsewhere)
    os.symlink(elsewhere, job.folder)
    manager.delete(job.id)
    assert not os.path.lexists(job.folder) and (elsewhere / "job.json").is_file()


def test_clear_finished_deletes_only_the_finished_jobs(manager):
    finished = [manager.wait(manager.submit(n, lambda ctx: None, total=1).id, WAIT) for n in "ab"]
    failed = manager.wait(manager.submit("c", failing, total=1).id, WAIT)
    started, release = threading.Event(), threading.Event()
    running = manager.submit("d", blocking(started, release), total=1)
    stopped = manager.stop(manager.submit("e", lambda ctx: None, total=1).id)  # queued behind "d"
    assert started.wait(WAIT)
    assert sorted(manager.clear_finished()) == sorted(j.id for j in finished)
    assert {j.id for j in manager.list()} == {failed.id, running.id, stopped.id}
    assert not any(os.path.exists(j.folder) for j in finished)
    release.set()
    manager.wait(running.id, WAIT)
    assert manager.clear_finished() == [running.id]


def test_a_delete_cut_short_after_its_rename_is_finished_on_the_next_start(manager, monkeypatch):
    job = manager.wait(manager.submit("a", failing, total=1).id, WAIT)
    monkeypatch.setattr(jobs.shutil, "rmtree", lambda path: None)  # killed before the removal
    manager.delete(job.id)
    (aside,) = os.listdir(manager.root)
    assert aside.startswith(".deleted-")
    monkeypatch.undo()
    assert JobManager(manager.root).load_records() == [] and os.listdir(manager.root) == []


# -------------------------------------------------------------- durability
def test_a_kill_at_any_rename_of_the_job_files_leaves_every_job_loadable(tmp_path, monkeypatch, caplog):
    """Every os.replace the manager makes (job.json writes, a delete's rename), with a copy of the jobs folder
    just before and just after it: each copy is what a kill -9 at that instant leaves. Loading each copy must
    give every job that has a record, whole, and never a deleted one half-there."""
    import shutil

    root, copies = tmp_path / "jobs", tmp_path / "copies"
    real_replace, count = os.replace, [0]

    def replace(src, dst):
        if str(dst).startswith(str(root)):
            count[0] += 1
            shutil.copytree(root, copies / f"{count[0]:03d}-before", symlinks=True)
            real_replace(src, dst)
            shutil.copytree(root, copies / f"{count[0]:03d}-after", symlinks=True)
        else:
            real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    m = JobManager(str(root))

    def trains(ctx):
        for i in (1, 2):
            ctx.emit({"type": "iteration", "iteration": i, "reward_mean": 0.5})
            ctx.emit({"type": "checkpoint", "iteration": i, "path": "checkpoint"})
            ctx.emit({"type": "lora", "path": f"/loras/a_{i:05d}.safetensors", "iteration": i})

    def stops(ctx):
        ctx.emit({"type": "iteration", "iteration": 1, "reward_mean": 0.1})
        m.stop(ctx.job.id)

    def resumes(ctx):
        history = {"metrics": [{"iteration": 1, "reward_mean": 0.1}], "evals": []}
        ctx.emit({"type": "resumed", "iteration": 1, "history": history})
        ctx.emit({"type": "iteration", "iteration": 2, "reward_mean": 0.2})

    finished = m.wait(m.submit("finished", trains, total=2).id, WAIT)
    resumed = m.wait(m.submit("resumed", stops, total=2).id, WAIT)
    m.submit("resumed", resumes, total=2, resume_of=resumed.id)
    m.wait(resumed.id, WAIT)
    m.delete(finished.id)
    monkeypatch.setattr(os, "replace", real_replace)
    m.shutdown()
    snapshots = sorted(os.listdir(copies))
    assert len(snapshots) == 2 * 16  # 15 record writes (7 + 8: every state change and persisted event), 1 rename
    for snap in snapshots:
        folder = copies / snap
        with_record = {e for e in os.listdir(folder) if jobs.ID_RE.fullmatch(e) and (folder / e / "job.json").is_file()}
        caplog.clear()
        loaded = JobManager(str(folder)).load_records()
        assert "skipping" not in caplog.text, (snap, caplog.text)
        assert {j.id for j in loaded} == with_record, snap
        assert not [e for e in os.listdir(folder) if e.startswith(".deleted-")], snap
        for job in loaded:
            assert [m["iteration"] for m in job.metrics] == list(range(1, job.iteration + 1)), (snap, job.metrics)
    final = JobManager(str(root)).load_records()
    assert [(j.id, j.state, j.iteration) for j in final] == [(resumed.id, JobState.FINISHED, 2)]
