"""Background jobs: GRPO-LoRA training runs queued per device, stoppable, recorded on disk.

`JobManager.submit(name, work, device=..., total=...)` queues a job; one worker thread per device runs
that device's jobs one at a time, first in first out, each as `work(ctx)`: the work reports training
events with `ctx.emit` and polls `ctx.should_stop()`. Every state change is written atomically to
`<root>/<id>/job.json` and forwarded to the listener, so a UI can follow the jobs and they survive a
server restart as records (`load_records`). Nothing here imports ComfyUI or torch: the nodes and HTTP
routes build on it (docs/architecture.md, "ComfyUI background training").

A job may carry a `key` (`settings_key(...)` of the settings that define it): `submit_unique` returns the
queued or running job with the same key instead of starting a duplicate. `to_dict` reports seconds per
iteration and an ETA measured from the iteration events of the current run.

States: queued → running → finished; a stop request makes a running job stopping, then stopped when the
work returns; an exception makes it failed; a queued job that is stopped never runs. `submit(...,
resume_of=id)` continues a stopped or failed job as the same job (same id and folder: one run, one record),
queued again with the new work. `delete(id)` removes an ended job's record and folder, `clear_finished()`
every finished one; a queued, running or stopping job is refused (`JobActiveError`).

Durability: job.json is the only file the manager writes, always whole (written beside and renamed over);
a deleted folder is renamed aside before it is removed, so a kill at any instant leaves every job either
loadable or gone, never half-written.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import secrets
import shutil
import string
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from ..util.atomic import atomic_write_json
from .state import HISTORY_KEY, Job, JobState, json_safe, settings_key

__all__ = ["Job", "JobActiveError", "JobContext", "JobManager", "JobState", "json_safe", "settings_key"]

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[a-z0-9]{12}")
PERSIST_EVENTS = frozenset({"checkpoint", "lora", "resumed"})  # also rewrite job.json: a record knows the progress
RECORD_NAME = "job.json"
INTERRUPTED = "interrupted by a server restart"
DELETED_PREFIX = ".deleted-"  # a job folder renamed aside on its way out (never loaded; removed on load)


class JobActiveError(ValueError):
    """The job is queued, running or stopping: it cannot be deleted (HTTP 409)."""


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
    stop: threading.Event  # set by a stop request; the work polls it
    done: threading.Event  # set once a terminal state is on disk


class JobManager:
    """Queues, runs, stops and records jobs; thread safe (HTTP handlers, nodes and workers call it at once)."""

    def __init__(self, root: str, on_event: Callable[[str, dict], None] | None = None):
        self.root = os.path.abspath(root)
        self.on_event = on_event
        os.makedirs(self.root, exist_ok=True)
        self._lock = threading.Lock()  # the tables below and every job's state change
        self._io_lock = threading.Lock()  # snapshot + write of a record, so the newest snapshot lands last
        self._jobs: dict[str, Job] = {}
        self._runs: dict[str, _Run] = {}
        self._queues: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._workers: dict[str, threading.Thread] = {}
        self._closed = False

    # ------------------------------------------------------------------ public
    def submit(
        self,
        name: str,
        work: Callable[[JobContext], None],
        *,
        device: str = "cpu",
        total: int,
        resume_of: str | None = None,
        start_iteration: int = 0,
        meta: dict | None = None,
        key: str | None = None,
    ) -> Job:
        """Queue `work` as a job on `device`; it starts when the device's earlier jobs are done. With
        `resume_of`, that stopped or failed job is queued again instead (same id, folder and record; the
        work resumes its checkpoint and emits a "resumed" event); KeyError if it was deleted meanwhile,
        ValueError if it is no longer stopped or failed."""
        return self._submit(
            name,
            work,
            device=device,
            total=total,
            resume_of=resume_of,
            start_iteration=start_iteration,
            meta=meta,
            key=key,
            unique=False,
        )[0]

    def submit_unique(self, key: str, name: str, work: Callable[[JobContext], None], **kwargs) -> tuple[Job, bool]:
        """Like submit, unless a queued or running job has this key: then (that job, False) and `work` is
        dropped; otherwise (the new job, True). Atomic: two calls with one key never start two jobs."""
        return self._submit(name, work, key=key, unique=True, **kwargs)

    def find_active(self, key: str) -> Job | None:
        """The queued or running job with this key (the newest), or None."""
        with self._lock:
            return self._find_active(key)

    def _find_active(self, key: str) -> Job | None:
        found = [j for j in self._jobs.values() if j.key == key and j.state in (JobState.QUEUED, JobState.RUNNING)]
        return max(found, key=lambda j: j.created or 0.0) if found else None

    def _submit(
        self, name, work, *, device="cpu", total, resume_of=None, start_iteration=0, meta=None, key=None, unique=False
    ) -> tuple[Job, bool]:
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
            if resume_of is not None:
                job = self._requeue(resume_of, work, name=name, device=device, total=total, meta=meta, key=key)
            else:
                job = self._new_job(
                    name, work, device=device, total=total, start_iteration=start_iteration, meta=meta, key=key
                )
        self._changed(job)  # "queued" reaches the listener before "running" can
        with self._lock:
            if job.state is JobState.QUEUED:  # not stopped (or shut down) in between
                self._queues[job.device].append(job.id)
                if job.device not in self._workers:
                    worker = threading.Thread(
                        target=self._worker, args=(job.device,), daemon=True, name=f"densegrpo-jobs-{job.device}"
                    )
                    self._workers[job.device] = worker
                    worker.start()
        return job, True

    def _new_job(self, name, work, *, device, total, start_iteration, meta, key) -> Job:
        """Under self._lock: a new job and its folder."""
        job_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))
        while job_id in self._jobs or os.path.exists(os.path.join(self.root, job_id)):
            job_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))
        job = Job(
            id=job_id,
            name=name,
            device=str(device),
            folder=os.path.join(self.root, job_id),
            total=int(total),
            iteration=int(start_iteration),
            created=time.time(),
            meta=json_safe(dict(meta or {})),
            key=key,
            start_iteration=int(start_iteration),
        )
        os.makedirs(job.folder)
        self._jobs[job.id] = job
        self._runs[job.id] = _Run(work, threading.Event(), threading.Event())
        return job

    def _requeue(self, job_id, work, *, name, device, total, meta, key) -> Job:
        """Under self._lock: the stopped or failed job `job_id` queued again with `work` (same id, folder)."""
        job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(f"job {job_id!r} to resume no longer exists (deleted)")
        if job.state not in (JobState.STOPPED, JobState.FAILED) or not self._runs[job.id].done.is_set():
            raise ValueError(f"job {job.id} is {job.state.value}: only a stopped or failed job can be resumed")
        job.requeue(name, str(device), total, key, json_safe(dict(meta or {})))
        self._runs[job.id] = _Run(work, threading.Event(), threading.Event())
        return job

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

    def delete(self, job_id: str) -> Job:
        """Remove an ended job: from the manager, its record and its whole folder (checkpoint, plots, ...;
        files written elsewhere, such as its LoRAs, stay). JobActiveError for a queued, running or stopping
        job; ValueError / KeyError for a malformed / unknown id, as `get`."""
        job = self.get(job_id)
        with self._lock:
            if job.id not in self._jobs:
                raise KeyError(f"unknown job id {job.id!r}")
            if not job.state.terminal or not self._runs[job.id].done.is_set():
                raise JobActiveError(
                    f"job {job.id} is {job.state.value}: stop it first (only a finished, stopped or failed job "
                    f"can be deleted)"
                )
            del self._jobs[job.id], self._runs[job.id]
        with self._io_lock:  # no record write of this job is under way (none starts: its folder is gone)
            self._remove_folder(job.id)
        self._notify(job.id, {"type": "deleted", "job_id": job.id})
        return job

    def clear_finished(self) -> list[str]:
        """Delete every finished job (stopped and failed ones stay: they can be resumed); → their ids."""
        with self._lock:
            ids = [j.id for j in self._jobs.values() if j.state is JobState.FINISHED]
        deleted = []
        for job_id in ids:
            try:
                self.delete(job_id)
            except KeyError:  # deleted meanwhile
                continue
            deleted.append(job_id)
        return deleted

    def _remove_folder(self, job_id: str) -> None:
        """Rename `<root>/<id>` aside (one atomic step: the job is gone from disk), then remove it. The path
        comes from the root and a validated id only, never from a record."""
        if not ID_RE.fullmatch(job_id):
            raise ValueError(f"malformed job id {job_id[:40]!r}")
        folder = os.path.join(self.root, job_id)
        if not os.path.lexists(folder):
            return
        aside = os.path.join(self.root, f"{DELETED_PREFIX}{job_id}-{secrets.token_hex(4)}")
        os.replace(folder, aside)
        self._remove_aside(aside)

    @staticmethod
    def _remove_aside(path: str) -> None:
        try:
            if os.path.islink(path):  # never follow a link out of the jobs folder
                os.unlink(path)
            else:
                shutil.rmtree(path)
        except OSError:
            log.exception("could not remove the deleted job folder %s (removed on the next start)", path)

    def resumable(self, job_id: str) -> str:
        """The checkpoint folder of a stopped or failed job; ValueError saying why a job cannot be resumed."""
        job = self.get(job_id)
        if job.state not in (JobState.STOPPED, JobState.FAILED):
            raise ValueError(f"job {job.id} is {job.state.value}: only a stopped or failed job can be resumed")
        from ..training.checkpoint import resolve_checkpoint

        try:  # the newest complete checkpoint, also where the `checkpoint` link is missing (docs/robustness.md)
            return resolve_checkpoint(job.folder)
        except FileNotFoundError:
            raise ValueError(
                f"job {job.id} has no checkpoint to resume from (none in {job.folder}: it ended before its first save)"
            ) from None

    def load_records(self) -> list[Job]:
        """Read the job.json records under root into the manager (known ids are skipped). A job that was
        queued, running or stopping when the process ended becomes failed ("interrupted by a server restart")."""
        loaded = []
        for entry in sorted(os.listdir(self.root)):
            if entry.startswith(DELETED_PREFIX):  # a delete that a kill interrupted: finish it
                self._remove_aside(os.path.join(self.root, entry))
                continue
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
            if interrupted:  # a correction of the record, not a transition: its process is gone
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
        run.work = None  # its closure holds the private model copy: free it with the job
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
        small = {k: v for k, v in event.items() if k != HISTORY_KEY}  # the history stays with the job
        self._notify(job.id, {**small, "job_id": job.id, "job": job.to_dict()})

    def _changed(self, job: Job) -> None:
        """After a state change: write the record, tell the listener, release waiters once terminal."""
        d = self._persist(job)
        self._notify(job.id, {"type": "state", "state": d["state"], "job": d})
        if JobState(d["state"]).terminal:
            self._runs[job.id].done.set()

    def _persist(self, job: Job) -> dict:
        """Write job.json atomically from a fresh snapshot; a failed write is logged, the job goes on."""
        with self._io_lock:
            record = job.to_record()
            path = os.path.join(job.folder, RECORD_NAME)
            if os.path.isdir(job.folder):  # not when deleted meanwhile: never create its folder again
                try:
                    atomic_write_json(path, record, indent=None, allow_nan=False)
                except OSError:
                    log.exception("job %s: could not write %s", job.id, path)
        return {k: v for k, v in record.items() if k not in ("traceback", "history")}

    def _notify(self, job_id: str, event: dict) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(job_id, event)
        except Exception:  # noqa: BLE001 - a broken listener must not end a training job
            log.exception("job %s: the event listener failed on a %r event (ignored)", job_id, event.get("type"))
