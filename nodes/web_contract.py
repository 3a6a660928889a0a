"""What the Python side and the front-end (web/densegrpo.js, web/densegrpo.css) must spell the same way, defined
once here: the websocket event name, the job states and the job files the panel may fetch.
tests/test_web_contract.py parses the JS and CSS and checks they use exactly these names."""

from __future__ import annotations

from densegrpo_core.jobs.state import JobState
from densegrpo_core.jobs.training_work import STATUS_FILES

EVENT = "densegrpo.job"  # websocket event name of job updates (PromptServer.send_sync)
JOB_STATES = tuple(s.value for s in JobState)  # queued, running, stopping, finished, stopped, failed
TERMINAL_STATES = tuple(s.value for s in JobState if s.terminal)
ACTIVE_STATES = tuple(s.value for s in JobState if not s.terminal)
# the files of a job folder served by GET /densegrpo/jobs/{id}/files/{name}: those the job's work writes
JOB_FILES = STATUS_FILES
