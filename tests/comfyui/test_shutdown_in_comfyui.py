"""Shutting ComfyUI down (Ctrl+C) stops a running training job cleanly, and after a restart the job is
listed and can be resumed (skipped without $COMFYUI_PATH). Runs its own server, not the session's."""

import json
import os
import signal
import time

import harness
import pytest
from test_training_in_comfyui import job_id_of, train_prompt

pytestmark = pytest.mark.comfyui


def wait_for_job(client, job_id, predicate, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        j = client.get(f"/densegrpo/jobs/{job_id}")
        if predicate(j):
            return j
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: condition not reached in {timeout}s")


def test_ctrl_c_stops_the_job_with_a_checkpoint_and_a_restart_can_resume_it(tmp_path):
    path, _ = harness.find_comfyui()
    base = str(tmp_path / "base")
    server = harness.ComfyServer(path, base_dir=base)
    client = server.start()
    try:
        job_id = job_id_of(client.run(train_prompt("shutdown", iterations=100000)))
        wait_for_job(client, job_id, lambda j: j["state"] == "running" and j["iteration"] >= 1)
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(timeout=120)
    finally:
        server.stop(remove=False)
    folder = os.path.join(base, "output", "densegrpo", "jobs", job_id)
    record = json.load(open(os.path.join(folder, "job.json")))
    assert record["state"] == "stopped", record
    assert os.path.isdir(os.path.join(folder, "checkpoint")) and record["loras"]

    server = harness.ComfyServer(path, base_dir=base)
    client = server.start()
    try:
        listed = client.get(f"/densegrpo/jobs/{job_id}")
        assert listed["state"] == "stopped"
        done = listed["iteration"]
        assert job_id_of(client.run(train_prompt("shutdown", iterations=done + 1, resume=job_id))) == job_id
        final = wait_for_job(client, job_id, lambda j: j["state"] in ("finished", "failed", "stopped"))
        assert final["state"] == "finished" and final["iteration"] == done + 1, final
        full = client.get(f"/densegrpo/jobs/{job_id}?full=1")  # one run: the curve from iteration 1
        assert [m["iteration"] for m in full["metrics"]] == list(range(1, done + 2))
        assert [r["iteration"] for r in full["resumes"]] == [done]
    finally:
        server.stop(remove=False)
