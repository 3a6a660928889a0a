"""HTTP routes of the job manager (the sidebar panel of web/densegrpo.js reads them):

- GET  /densegrpo/jobs                      every job, newest first
- GET  /densegrpo/jobs/{id}[?full=1]        one job (full: metrics, evals, latest events)
- POST /densegrpo/jobs/{id}/stop            ask it to stop
- GET  /densegrpo/jobs/{id}/resume_prompt   the job's own prompt with resume_job set (POST it to /prompt)
- GET  /densegrpo/jobs/{id}/files/{name}    a file of web_contract.JOB_FILES of the job (reward_curve.png, ...)
- DELETE /densegrpo/jobs/{id}               delete an ended job: its record and job folder (never its LoRAs)
- POST /densegrpo/jobs/clear_finished       delete every finished job

Ids are validated by the manager: a malformed id answers 400, an unknown one 404; deleting a queued,
running or stopping job answers 409. No path from the client reaches the filesystem: a job's folder is the
manager's root joined with a known id. Answers name files relative to ComfyUI's folders (nodes/public.py),
never by absolute server path.
"""

from __future__ import annotations

import json
import os

from .job_service import PROMPT_FILE, get_manager
from .web_contract import JOB_FILES


def public_job(job, full: bool = False) -> dict:
    from .public import comfy_roots, public_view

    return public_view(job.to_dict(full=full), comfy_roots())


def _lookup(request, web):
    job_id = request.match_info["job_id"]
    try:
        return get_manager().get(job_id), None
    except ValueError:
        return None, web.json_response({"error": f"malformed job id {job_id[:40]!r}"}, status=400)
    except KeyError:
        return None, web.json_response({"error": f"unknown job id {job_id!r}"}, status=404)


def resume_prompt(job, manager) -> dict:
    """The prompt that started `job`, its Train node set to resume it; ValueError if it cannot be resumed."""
    manager.resumable(job.id)
    path = os.path.join(job.folder, PROMPT_FILE)
    if not os.path.isfile(path) or not job.meta.get("node_id"):
        raise ValueError(
            f"job {job.id} has no stored workflow to resume from: queue its Train node with resume_job = {job.id}"
        )
    with open(path, encoding="utf-8") as f:
        prompt = json.load(f)
    node = prompt.get(str(job.meta["node_id"]))
    if not isinstance(node, dict) or node.get("class_type") != "DenseGRPO_TrainLoRA":
        raise ValueError(f"job {job.id}: its stored workflow has no Train node {job.meta['node_id']}")
    node.setdefault("inputs", {})["resume_job"] = job.id
    return prompt


def register(routes) -> None:
    """Add the routes to ComfyUI's aiohttp route table (PromptServer.instance.routes)."""
    from aiohttp import web

    @routes.get("/densegrpo/jobs")
    async def list_jobs(request):
        return web.json_response({"jobs": [public_job(j) for j in get_manager().list()]})

    @routes.get("/densegrpo/jobs/{job_id}")
    async def get_job(request):
        job, error = _lookup(request, web)
        return error or web.json_response(public_job(job, full=request.query.get("full") == "1"))

    @routes.post("/densegrpo/jobs/{job_id}/stop")
    async def stop_job(request):
        job, error = _lookup(request, web)
        return error or web.json_response(public_job(get_manager().stop(job.id)))

    @routes.get("/densegrpo/jobs/{job_id}/resume_prompt")
    async def get_resume_prompt(request):
        job, error = _lookup(request, web)
        if error:
            return error
        try:
            return web.json_response({"prompt": resume_prompt(job, get_manager())})
        except ValueError as e:
            from .public import comfy_roots, public_string

            return web.json_response({"error": public_string(str(e), comfy_roots())}, status=409)

    @routes.delete("/densegrpo/jobs/{job_id}")
    async def delete_job(request):
        from densegrpo_core.jobs.manager import JobActiveError

        job, error = _lookup(request, web)
        if error:
            return error
        try:
            get_manager().delete(job.id)
        except JobActiveError as e:
            return web.json_response({"error": str(e)}, status=409)
        except KeyError:  # deleted meanwhile
            return web.json_response({"error": f"unknown job id {job.id!r}"}, status=404)
        return web.json_response({"deleted": job.id})

    @routes.post("/densegrpo/jobs/clear_finished")
    async def clear_finished(request):
        return web.json_response({"deleted": get_manager().clear_finished()})

    @routes.get("/densegrpo/jobs/{job_id}/files/{name}")
    async def get_job_file(request):
        job, error = _lookup(request, web)
        if error:
            return error
        name = request.match_info["name"]
        path = os.path.join(job.folder, name)
        if name not in JOB_FILES or not os.path.isfile(path):
            return web.json_response({"error": f"no file {name[:40]!r} for job {job.id}"}, status=404)
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})


def register_with_comfyui() -> bool:
    """Register when running inside ComfyUI's server; False (and nothing done) elsewhere."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    if getattr(PromptServer, "instance", None) is None:
        return False
    register(PromptServer.instance.routes)
    return True
