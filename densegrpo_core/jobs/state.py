"""One background job as data: its states, its record (what job.json holds) and the settings key that
identifies a duplicate. The manager that runs jobs is manager.py.

A job is one training run from iteration 1 on, however often it was stopped and resumed: a resume re-queues
the same job (stopped/failed → queued), its "resumed" event brings back the run's history from the
checkpoint and leaves a mark (`resumes`) where the curve continues. The record keeps the whole reward curve
(`history`: iteration and reward of every metric and evaluation, not their large fields), so a reloaded job
draws the same curve."""

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
HISTORY_KEY = "history"  # a "resumed" event's {"metrics": [...], "evals": [...]}: folded in, kept nowhere else
CURVE_KEYS = ("iteration", "reward_mean", "eval_rewards")  # what the record's history keeps of each metric/eval
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
    JobState.STOPPED: {JobState.QUEUED},  # resumed: the same job continues its run
    JobState.FAILED: {JobState.QUEUED},
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
    """Append a record of iteration i, dropping any of iteration >= i first (a resumed run redoes the
    iterations after its checkpoint), and keep the last MAX_RECORDS."""
    it = record.get("iteration")
    if isinstance(it, (int, float)):
        while records and isinstance(records[-1].get("iteration"), (int, float)) and records[-1]["iteration"] >= it:
            records.pop()
    records.append(record)
    if len(records) > MAX_RECORDS:
        del records[: len(records) - MAX_RECORDS]


def _summary(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "type" and k not in LARGE_KEYS and k != HISTORY_KEY}


def _curve(records: list[dict]) -> list[dict]:
    """The curve fields of each record (what job.json keeps of a history)."""
    return [{k: r[k] for k in CURVE_KEYS if k in r} for r in records]


def _history_list(value, what: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ValueError(f"a job history's {what!r} must be a list of records, got {str(value)[:80]}")
    return value[-MAX_RECORDS:]


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
    resumed_from: str | None = None  # id of the job this one resumes (records written before resumes kept one id)
    resumes: list[dict] = field(default_factory=list)  # {"iteration": k, "time": t} of each resume of this run
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

    def requeue(self, name: str, device: str, total: int, key: str | None, meta: dict) -> None:
        """A stopped or failed job queued again to continue its run (`total` iterations in all)."""
        with self._lock:
            self.transition(JobState.QUEUED)
            self.name, self.device, self.total, self.key = name, device, int(total), key
            self.meta = {**self.meta, **meta}
            self.finished = self.error = self.traceback = None
            self.start_iteration, self.recorded_rate = self.iteration, None
            self._ticks.clear()

    def record(self, event: dict) -> None:
        """Fold one training event into the job: iteration count, metrics, evals, LoRA files, latest."""
        kind = event.get("type")
        if not isinstance(kind, str):
            raise ValueError(f"a job event needs a string 'type', got {str(event)[:200]}")
        summary = _summary(event)
        with self._lock:
            self.latest[kind] = {k: v for k, v in event.items() if k != HISTORY_KEY}
            if kind == "resumed":  # the run continues from its checkpoint: its history up to there, a mark
                k = int(event["iteration"])
                history = event.get(HISTORY_KEY)
                if history is not None:
                    self.metrics = [_summary(m) for m in _history_list(history.get("metrics"), "metrics")]
                    self.evals = [_summary(e) for e in _history_list(history.get("evals"), "evals")]
                self.metrics = [m for m in self.metrics if m.get("iteration", 0) <= k]
                self.evals = [e for e in self.evals if e.get("iteration", 0) <= k]
                self.iteration = self.start_iteration = k
                self._ticks.clear()
                self.resumes.append({"iteration": k, "time": time.time()})
            elif kind == "iteration":
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
                "resumes": [dict(r) for r in self.resumes],
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

    def to_record(self) -> dict:
        """What job.json holds: the summary, the traceback and the reward curve of the whole run."""
        with self._lock:
            d = self.to_dict()
            d["traceback"] = self.traceback
            d[HISTORY_KEY] = json_safe({"metrics": _curve(self.metrics), "evals": _curve(self.evals)})
            return d

    @classmethod
    def from_record(cls, d: dict, folder: str) -> "Job":
        """A job back from its job.json: the curve of its history, the last metric and eval in full."""
        history = d.get(HISTORY_KEY) or {}
        metrics = [dict(m) for m in _history_list(history.get("metrics", []), "metrics")]
        evals = [dict(e) for e in _history_list(history.get("evals", []), "evals")]
        for records, last in ((metrics, d.get("last_metric")), (evals, d.get("last_eval"))):
            if last:
                _append_capped(records, dict(last))
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
            metrics=metrics,
            evals=evals,
            loras=list(d.get("loras") or []),
            resumed_from=d.get("resumed_from"),
            resumes=[dict(r) for r in d.get("resumes") or []],
            meta=dict(d.get("meta") or {}),
            key=d.get("key"),
            recorded_rate=d.get("sec_per_iteration"),
        )
