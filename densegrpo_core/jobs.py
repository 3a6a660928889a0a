"""Background jobs: GRPO-LoRA training runs queued per device, stoppable, recorded on disk (issue 6).

`JobManager.submit(name, work, device=..., total=...)` queues a job; one worker thread per device runs
that device's jobs one at a time, first in first out, each as `work(ctx)`: the work reports training
events with `ctx.emit` and polls `ctx.should_stop()`. Every state change is written atomically to
`<root>/<id>/job.json` and forwarded to the listener, so a UI can follow the jobs and they survive a
server restart as records (`load_records`). Nothing here imports ComfyUI or torch: the nodes and HTTP
routes build on it (ARCHITECTURE.md, "ComfyUI background training").

A job may carry a `key` (`settings_key(...)` of the settings that define it): `submit_unique` returns the
queued or running job with the same key instead of starting a duplicate. `to_dict` reports seconds per
iteration and an ETA measured from the iteration events of the current run.

States: queued → running → finished; a stop request makes a running job stopping, then stopped when the
work returns; an exception makes it failed; a queued job that is stopped never runs.
"""
from __future__ import annotations

import collections
import enum
import hashlib
import json
import logging
import math
import os
import re
import secrets
import string
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[a-z0-9]{12}")
MAX_RECORDS = 10_000                 # metrics/evals kept per job: a long run's history in bounded memory
LARGE_KEYS = frozenset({"rewards"})  # per-sample payloads: kept in `latest` only, not in every metric record
PERSIST_EVENTS = frozenset({"checkpoint", "lora"})  # also rewrite job.json then: a record knows the progress
RECORD_NAME = "job.json"
RATE_WINDOW = 10                     # iterations the seconds-per-iteration figure averages over
INTERRUPTED = "interrupted by a server restart"


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.FINISHED, JobState.STOPPED, JobState.FAILED)


TRANSITIONS = {
    JobState.QUEUED: {JobState.RUNNING, JobState.STOPPED},
    JobState.RUNNING: {JobState.STOPPING, JobState.FINISHED, JobState.FAILED},
    # a stop that arrives after the last iteration still ends the job finished
    JobState.STOPPING: {JobState.STOPPED, JobState.FAILED, JobState.FINISHED},
    JobState.FINISHED: set(), JobState.STOPPED: set(), JobState.FAILED: set(),
}


def json_safe(value):
    """A copy of `value` that `json.dumps(allow_nan=False)` accepts: NaN/inf → None, tensors/arrays → lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):                       # torch tensors, numpy arrays and scalars
        return json_safe(value.tolist())
    return str(value)


def settings_key(settings) -> str:
    """A short stable digest of JSON-able settings (dict order does not matter): equal settings, equal key."""
    text = json.dumps(json_safe(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _append_capped(records: list, record: dict) -> None:
    records.append(record)
    if len(records) > MAX_RECORDS:
        del records[:len(records) - MAX_RECORDS]


@dataclass
class Job:
    id: str                                   # short unique id, [a-z0-9]{12}; also the job folder's name
    name: str                                 # the user's LoRA/job name (sanitised by the caller)
    device: str                               # "cpu", "cuda:0", ...: one running job per device
    folder: str                               # job folder: job.json, checkpoint, metrics.jsonl, plots
    total: int                                # iterations planned
    state: JobState = JobState.QUEUED
    iteration: int = 0                        # iterations done (a resumed job starts at its checkpoint's)
    created: float | None = None              # time.time() of submit
    started: float | None = None              # time.time() when the work started
    finished: float | None = None             # time.time() when the job reached a terminal state
    error: str | None = None                  # "ExceptionType: message" (one line) of the exception that failed it
    traceback: str | None = None              # the full traceback of that exception
    metrics: list[dict] = field(default_factory=list)  # "iteration" events without large payloads, the last MAX_RECORDS
    evals: list[dict] = field(default_factory=list)    # "eval" events, the last MAX_RECORDS
    loras: list[str] = field(default_factory=list)     # LoRA files written ("lora" events), oldest first
    latest: dict = field(default_factory=dict)         # the latest event of each type, large payloads included
    resumed_from: str | None = None           # id of the job this one resumes
    meta: dict = field(default_factory=dict)  # the submitter's extra facts (advantage mode, LoRA folder, ...)
    key: str | None = None                    # settings_key of the settings that define the job (dedupe)
    start_iteration: int = 0                  # the iteration this run started at (a resume's checkpoint)
    recorded_rate: float | None = None        # seconds per iteration read back from a record (no live events)
    _ticks: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RATE_WINDOW + 1),
                                      init=False, repr=False, compare=False)  # (time, iteration) of recent events
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False, compare=False)

    def transition(self, new: JobState) -> None:
        """Move to `new`, stamping start/finish times; an illegal move is a bug and raises RuntimeError."""
        with self._lock:
            if new not in TRANSITIONS[self.state]:
                raise RuntimeError(f"job {self.id}: illegal state change {self.state.value} -> {new.value}")
            self.state = new
            if new is JobState.RUNNING:
                self.started = time.time()
            if new.terminal:
                self.finished = time.time()

    def record(self, event: dict) -> None:
        """Fold one training event into the job: iteration count, metrics, evals, LoRA files, latest."""
        kind = event.get("type")
        if not isinstance(kind, str):
            raise ValueError(f"a job event needs a string 'type', got {str(event)[:200]}")
        summary = {k: v for k, v in event.items() if k != "type" and k not in LARGE_KEYS}
        with self._lock:
            self.latest[kind] = event
            if kind == "iteration":
                self.iteration = int(event["iteration"])
                self._ticks.append((time.time(), self.iteration))
                _append_capped(self.metrics, summary)
            elif kind == "eval":
                _append_capped(self.evals, summary)
            elif kind == "lora" and str(event["path"]) not in self.loras:
                self.loras.append(str(event["path"]))

    def timing(self) -> tuple[float | None, float | None]:
        """(seconds per iteration, seconds left) of the current run; None before the first iteration."""
        with self._lock:
            ticks = list(self._ticks)
            if not ticks or self.started is None:
                return (self.recorded_rate, 0.0 if self.state.terminal else None) if self.recorded_rate else (None, None)
            if len(ticks) == RATE_WINDOW + 1:
                (t0, i0), (t1, i1) = ticks[0], ticks[-1]
            else:
                (t0, i0), (t1, i1) = (self.started, self.start_iteration), ticks[-1]
            if i1 <= i0:
                return None, None
            per = (t1 - t0) / (i1 - i0)
            left = per * max(0, self.total - self.iteration) if not self.state.terminal else 0.0
            return per, left

    def to_dict(self, full: bool = False) -> dict:
        """JSON-safe view; without `full`, metrics/evals are counts plus the last record, no traceback/latest."""
        with self._lock:
            per, left = self.timing()
            d = {"id": self.id, "name": self.name, "device": self.device, "folder": self.folder,
                 "total": self.total, "state": self.state.value, "iteration": self.iteration,
                 "created": self.created, "started": self.started, "finished": self.finished,
                 "error": self.error, "loras": list(self.loras), "resumed_from": self.resumed_from,
                 "meta": self.meta, "metrics_count": len(self.metrics), "evals_count": len(self.evals),
                 "last_metric": self.metrics[-1] if self.metrics else None,
                 "last_eval": self.evals[-1] if self.evals else None, "key": self.key,
                 "sec_per_iteration": per, "eta_s": left}
            if full:
                d.update(traceback=self.traceback, metrics=self.metrics, evals=self.evals, latest=self.latest)
            return json_safe(d)

    @classmethod
    def from_record(cls, d: dict, folder: str) -> "Job":
        """A job back from its job.json (which keeps only the last metric and eval of the lists)."""
        return cls(id=d["id"], name=d["name"], device=d["device"], folder=folder, total=int(d["total"]),
                   state=JobState(d["state"]), iteration=int(d.get("iteration", 0)), created=d.get("created"),
                   started=d.get("started"), finished=d.get("finished"), error=d.get("error"),
                   traceback=d.get("traceback"), metrics=[d["last_metric"]] if d.get("last_metric") else [],
                   evals=[d["last_eval"]] if d.get("last_eval") else [], loras=list(d.get("loras") or []),
                   resumed_from=d.get("resumed_from"), meta=dict(d.get("meta") or {}), key=d.get("key"),
                   recorded_rate=d.get("sec_per_iteration"))


class JobContext:
    """What a work function gets: its job, `emit` for training events and `should_stop` to poll."""

    def __init__(self, job: Job, manager: "JobManager", stop: threading.Event):
        self.job = job
        self._manager = manager
        self._stop = stop

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def emit(self, event: dict) -> None:
        """Record a training event ({"type": ..., ...}) into the job and forward it to the listener."""
        self._manager._record(self.job, dict(event))


@dataclass
class _Run:
    work: Callable[[JobContext], None] | None  # None for jobs loaded from records
    stop: threading.Event                      # set by a stop request; the work polls it
    done: threading.Event                      # set once a terminal state is on disk


class JobManager:
    """Queues, runs, stops and records jobs; thread safe (HTTP handlers, nodes and workers call it at once)."""

    def __init__(self, root: str, on_event: Callable[[str, dict], None] | None = None):
        self.root = os.path.abspath(root)
        self.on_event = on_event
        os.makedirs(self.root, exist_ok=True)
        self._lock = threading.Lock()          # the tables below and every job's state change
        self._io_lock = threading.Lock()       # snapshot + write of a record, so the newest snapshot lands last
        self._jobs: dict[str, Job] = {}
        self._runs: dict[str, _Run] = {}
        self._queues: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._workers: dict[str, threading.Thread] = {}
        self._closed = False

    # ------------------------------------------------------------------ public
    def submit(self, name: str, work: Callable[[JobContext], None], *, device: str = "cpu", total: int,
               resume_of: str | None = None, start_iteration: int = 0, meta: dict | None = None,
               key: str | None = None) -> Job:
        """Queue `work` as a job on `device`; it starts when the device's earlier jobs are done."""
        return self._submit(name, work, device=device, total=total, resume_of=resume_of,
                            start_iteration=start_iteration, meta=meta, key=key, unique=False)[0]

    def submit_unique(self, key: str, name: str, work: Callable[[JobContext], None], **kwargs) -> tuple[Job, bool]:
        """Like submit, unless a queued or running job has this key: then (that job, False) and `work` is
        dropped; otherwise (the new job, True). Atomic: two calls with one key never start two jobs."""
        return self._submit(name, work, key=key, unique=True, **kwargs)

    def find_active(self, key: str) -> Job | None:
        """The queued or running job with this key (the newest), or None."""
        with self._lock:
            return self._find_active(key)

    def _find_active(self, key: str) -> Job | None:
        found = [j for j in self._jobs.values()
                 if j.key == key and j.state in (JobState.QUEUED, JobState.RUNNING)]
        return max(found, key=lambda j: j.created or 0.0) if found else None

    def _submit(self, name, work, *, device="cpu", total, resume_of=None, start_iteration=0, meta=None,
                key=None, unique=False) -> tuple[Job, bool]:
        if int(total) < 1 or int(start_iteration) < 0:
            raise ValueError(f"need total >= 1 and start_iteration >= 0, got {total} and {start_iteration}")
        if resume_of is not None:
            self.get(resume_of)
        with self._lock:
            if self._closed:
                raise RuntimeError("the job manager is shut down: it takes no new jobs")
            if unique and key is not None:
                active = self._find_active(key)
                if active is not None:
                    return active, False
            job_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))
            while job_id in self._jobs or os.path.exists(os.path.join(self.root, job_id)):
                job_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))
            job = Job(id=job_id, name=name, device=str(device), folder=os.path.join(self.root, job_id),
                      total=int(total), iteration=int(start_iteration), created=time.time(),
                      resumed_from=resume_of, meta=json_safe(dict(meta or {})), key=key,
                      start_iteration=int(start_iteration))
            os.makedirs(job.folder)
            self._jobs[job.id] = job
            self._runs[job.id] = _Run(work, threading.Event(), threading.Event())
        self._changed(job)                     # "queued" reaches the listener before "running" can
        with self._lock:
            if job.state is JobState.QUEUED:   # not stopped (or shut down) in between
                self._queues[job.device].append(job.id)
                if job.device not in self._workers:
                    worker = threading.Thread(target=self._worker, args=(job.device,), daemon=True,
                                              name=f"densegrpo-jobs-{job.device}")
                    self._workers[job.device] = worker
                    worker.start()
        return job, True

    def get(self, job_id: str) -> Job:
        """The job; ValueError for a malformed id (HTTP 400), KeyError for an unknown one (404)."""
        if not isinstance(job_id, str) or not ID_RE.fullmatch(job_id):
            raise ValueError(f"malformed job id {str(job_id)[:40]!r}: expected 12 characters of a-z, 0-9")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(f"unknown job id {job_id!r}")
        return job

    def list(self) -> list[Job]:
        """All jobs, newest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        return sorted(reversed(jobs), key=lambda j: j.created or 0.0, reverse=True)  # stable: ties newest first

    def stop(self, job_id: str) -> Job:
        """Queued → stopped at once; running → stopping (the work sees should_stop()); otherwise unchanged."""
        job = self.get(job_id)
        with self._lock:
            changed = self._request_stop(job)
        if changed:
            self._changed(job)
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it is terminal (and its record written); TimeoutError if `timeout` s pass first."""
        job = self.get(job_id)
        if not self._runs[job.id].done.wait(timeout):
            raise TimeoutError(f"job {job.id} is still {job.state.value} after {timeout} s")
        return job

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every job and wait up to `timeout` s for the workers (running work saves and returns)."""
        with self._lock:
            self._closed = True
            changed = [job for job in self._jobs.values() if self._request_stop(job)]
            workers = list(self._workers.values())
        for job in changed:
            self._changed(job)
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def resumable(self, job_id: str) -> str:
        """The checkpoint folder of a stopped or failed job; ValueError saying why a job cannot be resumed."""
        job = self.get(job_id)
        if job.state not in (JobState.STOPPED, JobState.FAILED):
            raise ValueError(f"job {job.id} is {job.state.value}: only a stopped or failed job can be resumed")
        path = os.path.join(job.folder, "checkpoint")
        if not os.path.isdir(path):
            raise ValueError(f"job {job.id} has no checkpoint to resume from ({path} does not exist: "
                             f"it ended before its first save)")
        return path

    def load_records(self) -> list[Job]:
        """Read the job.json records under root into the manager (known ids are skipped). A job that was
        queued, running or stopping when the process ended becomes failed ("interrupted by a server restart")."""
        loaded = []
        for entry in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, entry, RECORD_NAME)
            if not ID_RE.fullmatch(entry) or not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    job = Job.from_record(json.load(f), os.path.join(self.root, entry))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("skipping unreadable job record %s: %s", path, e)
                continue
            if job.id != entry:
                log.warning("skipping job record %s: it names job %r", path, job.id)
                continue
            interrupted = not job.state.terminal
            if interrupted:        # a correction of the record, not a transition: its process is gone
                job.state, job.error, job.finished = JobState.FAILED, INTERRUPTED, os.path.getmtime(path)
            with self._lock:
                if job.id in self._jobs:
                    continue
                self._jobs[job.id] = job
                self._runs[job.id] = _Run(None, threading.Event(), threading.Event())
                self._runs[job.id].done.set()
            if interrupted:
                self._persist(job)
            loaded.append(job)
        return loaded

    # ----------------------------------------------------------------- workers
    def _worker(self, device: str) -> None:
        """Run the device's queued jobs in order; exit when the queue is empty (submit starts a new one)."""
        while True:
            with self._lock:
                queue = self._queues[device]
                if not queue:
                    del self._workers[device]
                    return
                job = self._jobs[queue.popleft()]
                run = self._runs[job.id]
                job.transition(JobState.RUNNING)
            self._changed(job)
            self._execute(job, run)

    def _execute(self, job: Job, run: _Run) -> None:
        error = tb = None
        try:
            run.work(JobContext(job, self, run.stop))
        except BaseException as e:  # noqa: BLE001 - whatever the work raises ends this job, never the worker
            error = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
            tb = traceback.format_exc()
        with self._lock, job._lock:
            if error is not None:
                job.error, job.traceback = error, tb
                job.transition(JobState.FAILED)
            elif run.stop.is_set() and job.iteration < job.total:
                job.transition(JobState.STOPPED)
            else:
                job.transition(JobState.FINISHED)
        self._changed(job)

    def _request_stop(self, job: Job) -> bool:
        """Under self._lock: set the stop flag and move the state; True if the state changed."""
        run = self._runs[job.id]
        if job.state is JobState.QUEUED:
            queue = self._queues[job.device]
            if job.id in queue:
                queue.remove(job.id)
            run.stop.set()
            job.transition(JobState.STOPPED)
            return True
        if job.state is JobState.RUNNING:
            run.stop.set()
            job.transition(JobState.STOPPING)
            return True
        return False

    # ------------------------------------------------------- records and events
    def _record(self, job: Job, event: dict) -> None:
        job.record(event)
        if event["type"] in PERSIST_EVENTS:
            self._persist(job)
        self._notify(job.id, {**event, "job_id": job.id, "job": job.to_dict()})

    def _changed(self, job: Job) -> None:
        """After a state change: write the record, tell the listener, release waiters once terminal."""
        d = self._persist(job)
        self._notify(job.id, {"type": "state", "state": d["state"], "job": d})
        if JobState(d["state"]).terminal:
            self._runs[job.id].done.set()

    def _persist(self, job: Job) -> dict:
        """Write job.json atomically from a fresh snapshot; a failed write is logged, the job goes on."""
        with self._io_lock:
            d = job.to_dict()
            path = os.path.join(job.folder, RECORD_NAME)
            tmp = f"{path}.tmp{os.getpid()}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump({**d, "traceback": job.traceback}, f, indent=1, allow_nan=False)
                os.replace(tmp, path)
            except OSError:
                log.exception("job %s: could not write %s", job.id, path)
        return d

    def _notify(self, job_id: str, event: dict) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(job_id, event)
        except Exception:  # noqa: BLE001 - a broken listener must not end a training job
            log.exception("job %s: the event listener failed on a %r event (ignored)", job_id, event.get("type"))
