"""The kill -9 drill of tools/kill_drill.py on a few runs (the recorded 20-run drill is in docs/robustness.md):
a run killed at a random point always continues to the same metrics and LoRA as an uninterrupted one."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import kill_drill  # noqa: E402
import pytest  # noqa: E402


@pytest.mark.slow
def test_runs_killed_at_random_points_continue_to_the_uninterrupted_result(tmp_path):
    summary = kill_drill.drill(str(tmp_path), runs=2, seed=100, iterations=4, log=lambda *a: None)
    assert summary["all_equal"], summary["runs"]
    assert all(r["exit_code"] == 0 for r in summary["runs"])
