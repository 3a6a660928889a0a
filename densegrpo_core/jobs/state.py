"""One background job as data: its states, its record (what job.json holds) and the settings key that
identifies a duplicate. The manager that runs jobs is jobs.py."""

from __future__ import annotations

import collections
import enum
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field

MAX_RECORDS = 10_000  # metrics/evals kept per job: a long run's history in bounded memory
LARGE_KEYS = frozenset({"rewards"})  # per-sample payloads: kept in `latest` only, not in every metric record
RATE_WINDOW = 10  # iterations the seconds-per-iteration figure averages over


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
    JobState.FINISHED: set(),
    JobState.STOPPED: set(),
    JobState.FAILED: set(),
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
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return json_safe(value.tolist())
    return str(value)


def settings_key(settings) -> str:
    """A short stable digest of JSON-able settings (dict order does not matter): equal settings, equal key."""
    text = json.dumps(json_safe(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _append_capped(records: list, record: dict) -> None:
    records.append(record)
    if len(records) > MAX_RECORDS:
        del records[: len(records) - MAX_RECORDS]


@dataclass
class Job:
    id: str  # short unique id, [a-z0-9]{12}; also the job folder's name
    name: str  # the user's LoRA/job name (sanitised by the caller)
    device: str  # "cpu", "cuda:0", ...: one running job per device
    folder: str  # job folder: job.json, checkpoint, metrics.jsonl, plots
    total: int  # iterations planned
    state: JobState = JobState.QUEUED
    iteration: int = 0  # iterations done (a resumed job starts at its checkpoint's)
    created: float | None = None  # time.time() of submit
    started: float | None = None  # time.time() when the work started
    finished: float | None = None  # time.time() when the job reached a terminal state
    error: str | None = None  # "ExceptionType: message" (one line) of the exception that failed it
    traceback: str | None = None  # the full traceback of that exception
    metrics: list[dict] = field(default_factory=list)  # "iteration" events without large payloads, the last MAX_RECORDS
    evals: list[dict] = field(default_factory=list)  # "eval" events, the last MAX_RECORDS
    loras: list[str] = field(default_factory=list)  # LoRA files written ("lora" events), oldest first
    latest: dict = field(default_factory=dict)  # the latest event of each type, large payloads included
    resumed_from: str | None = None  # id of the job this one resumes
    meta: dict = field(default_factory=dict)  # the submitter's extra facts (advantage mode, LoRA folder, ...)
    key: str | None = None  # settings_key of the settings that define the job (dedupe)
    start_iteration: int = 0  # the iteration this run started at (a resume's checkpoint)
    recorded_rate: float | None = None  # seconds per iteration read back from a record (no live events)
    _ticks: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=RATE_WINDOW + 1), init=False, repr=False, compare=False
    )  # (time, iteration) of recent events
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
                return (
                    (self.recorded_rate, 0.0 if self.state.terminal else None) if self.recorded_rate else (None, None)
                )
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
            d = {
                "id": self.id,
                "name": self.name,
                "device": self.device,
                "folder": self.folder,
                "total": self.total,
                "state": self.state.value,
                "iteration": self.iteration,
                "created": self.created,
                "started": self.started,
                "finished": self.finished,
                "error": self.error,
                "loras": list(self.loras),
                "resumed_from": self.resumed_from,
                "meta": self.meta,
                "metrics_count": len(self.metrics),
                "evals_count": len(self.evals),
                "last_metric": self.metrics[-1] if self.metrics else None,
                "last_eval": self.evals[-1] if self.evals else None,
                "key": self.key,
                "sec_per_iteration": per,
                "eta_s": left,
            }
            if full:
                d.update(traceback=self.traceback, metrics=self.metrics, evals=self.evals, latest=self.latest)
            return json_safe(d)

    @classmethod
    def from_record(cls, d: dict, folder: str) -> "Job":
        """A job back from its job.json (which keeps only the last metric and eval of the lists)."""
        return cls(
            id=d["id"],
            name=d["name"],
            device=d["device"],
            folder=folder,
            total=int(d["total"]),
            state=JobState(d["state"]),
            iteration=int(d.get("iteration", 0)),
            created=d.get("created"),
            started=d.get("started"),
            finished=d.get("finished"),
            error=d.get("error"),
            traceback=d.get("traceback"),
            metrics=[d["last_metric"]] if d.get("last_metric") else [],
            evals=[d["last_eval"]] if d.get("last_eval") else [],
            loras=list(d.get("loras") or []),
            resumed_from=d.get("resumed_from"),
            meta=dict(d.get("meta") or {}),
            key=d.get("key"),
            recorded_rate=d.get("sec_per_iteration"),
        )
