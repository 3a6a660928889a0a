"""The ComfyUI job service: the process-wide JobManager (created on first use, shut down when ComfyUI exits),
job events forwarded to the browser as `densegrpo.job` websocket messages (PromptServer.send_sync) and the
progress text a Train node shows while its job runs. The Train/Status/Stop nodes (train_nodes) and the HTTP
routes (routes) both use it; it imports neither."""

from __future__ import annotations

import atexit
import os
import threading

from .web_contract import EVENT

PROMPT_FILE = "prompt.json"  # the API prompt that started a job (written by the Train node, read by routes)
_manager = None
_manager_lock = threading.Lock()
_progress_targets: dict[str, tuple[str, str | None]] = {}  # job id -> (Train node id, browser client id)


def jobs_root() -> str:
    import folder_paths

    return os.path.join(folder_paths.get_output_directory(), "densegrpo", "jobs")


def _send(job_id: str, event: dict) -> None:
    """Forward a job event to the browser (thread safe): large payloads stay on the server, file names are
    relative to ComfyUI's folders; the Train node that started the job shows the progress."""
    try:
        from server import PromptServer
    except ImportError:
        return
    if PromptServer.instance is None:
        return
    from .public import comfy_roots, public_view

    small = public_view({k: v for k, v in event.items() if k not in ("rewards",)}, comfy_roots())
    PromptServer.instance.send_sync(EVENT, {**small, "job_id": job_id})
    if event.get("type") == "deleted":
        _progress_targets.pop(job_id, None)
        return
    target = _progress_targets.get(job_id)
    if target and isinstance(event.get("job"), dict) and event.get("type") in ("iteration", "state"):
        PromptServer.instance.send_progress_text(progress_text(event["job"]), target[0], target[1])


def format_duration(seconds: float) -> str:
    """A duration as 1h02m, 3m05s or 42s."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_text(job: dict) -> str:
    """One line for the Train node: state, iteration / total, last reward, s/it and ETA."""
    last = job.get("last_metric") or {}
    parts = [f"DenseGRPO job {job['id']} {job['state']}", f"iteration {job['iteration']}/{job['total']}"]
    if isinstance(last.get("reward_mean"), (int, float)):
        parts.append(f"reward {last['reward_mean']:.4f}")
    if job.get("sec_per_iteration"):
        parts.append(f"{job['sec_per_iteration']:.2f} s/it")
    if job["state"] in ("queued", "running") and job.get("eta_s") is not None:
        parts.append(f"ETA {format_duration(job['eta_s'])}")
    if job.get("error"):
        parts.append(f"error: {job['error']}")
    for warning in last.get("warnings") or []:  # the run's health (densegrpo_core/training/health.py)
        parts.append(f"warning: {warning['message']}")
    return " · ".join(parts)


def get_manager():
    """The process-wide job manager (created on first use; stops its jobs when ComfyUI exits)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            from densegrpo_core.jobs.manager import JobManager

            _manager = JobManager(jobs_root(), on_event=_send)
            _manager.load_records()  # jobs of earlier sessions: listed, resumable
            atexit.register(_manager.shutdown)
        return _manager


def client_id():
    """The browser client that queued the prompt now executing (None outside ComfyUI)."""
    try:
        from server import PromptServer

        return getattr(PromptServer.instance, "client_id", None)
    except ImportError:
        return None


def show_progress(job, unique_id, client) -> None:
    """Show `job`'s progress on Train node `unique_id` from now on (and at once)."""
    if unique_id is None:
        return
    _progress_targets[job.id] = (str(unique_id), client)
    try:
        from server import PromptServer
    except ImportError:
        return
    if PromptServer.instance is not None:
        PromptServer.instance.send_progress_text(progress_text(job.to_dict()), str(unique_id), client)
