"""HTTP routes of the job manager: GET /densegrpo/jobs, GET /densegrpo/jobs/{id}, POST /densegrpo/jobs/{id}/stop.

Ids are validated by the manager: a malformed id answers 400, an unknown one 404.
"""
from __future__ import annotations


def _lookup(request, web):
    from .train_nodes import get_manager
    job_id = request.match_info["job_id"]
    try:
        return get_manager().get(job_id), None
    except ValueError:
        return None, web.json_response({"error": f"malformed job id {job_id[:40]!r}"}, status=400)
    except KeyError:
        return None, web.json_response({"error": f"unknown job id {job_id!r}"}, status=404)


def register(routes) -> None:
    """Add the routes to ComfyUI's aiohttp route table (PromptServer.instance.routes)."""
    from aiohttp import web

    from .train_nodes import get_manager

    @routes.get("/densegrpo/jobs")
    async def list_jobs(request):
        return web.json_response({"jobs": [j.to_dict() for j in get_manager().list()]})

    @routes.get("/densegrpo/jobs/{job_id}")
    async def get_job(request):
        job, error = _lookup(request, web)
        return error or web.json_response(job.to_dict(full=request.query.get("full") == "1"))

    @routes.post("/densegrpo/jobs/{job_id}/stop")
    async def stop_job(request):
        job, error = _lookup(request, web)
        return error or web.json_response(get_manager().stop(job.id).to_dict())


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
