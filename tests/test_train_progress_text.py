"""What the Train node shows on itself while its job runs (send_progress_text), without ComfyUI."""

from nodes.job_service import progress_text


def job(**kw):
    d = {
        "id": "abcdefabcdef",
        "state": "running",
        "iteration": 12,
        "total": 300,
        "sec_per_iteration": 1.2,
        "eta_s": 345.6,
        "last_metric": {"reward_mean": 0.41234},
        "error": None,
    }
    d.update(kw)
    return d


def test_a_running_job_shows_iteration_reward_speed_and_eta():
    assert progress_text(job()) == (
        "DenseGRPO job abcdefabcdef running · iteration 12/300 · reward 0.4123 · 1.20 s/it · ETA 5m46s"
    )


def test_a_finished_job_shows_no_eta():
    assert "ETA" not in progress_text(job(state="finished", iteration=300, eta_s=0.0))


def test_a_failed_job_shows_its_error():
    assert progress_text(job(state="failed", error="RuntimeError: boom")).endswith("error: RuntimeError: boom")


def test_before_the_first_iteration_only_the_state_and_count_show():
    assert (
        progress_text(job(state="queued", iteration=0, sec_per_iteration=None, eta_s=None, last_metric=None))
        == "DenseGRPO job abcdefabcdef queued · iteration 0/300"
    )
