"""`./run`, the entry point for newcomers and CI: without arguments it prints its usage and sets nothing up."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_without_arguments_prints_usage_and_exits_0():
    r = subprocess.run(["bash", os.path.join(ROOT, "run")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ./run <command>") and "./run test" in r.stdout and "train" in r.stdout
    assert "setting up" not in r.stderr  # no venv set-up, no test suite


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "./run test -q" in ci and "./run lint" in ci
    assert "./run test" in readme
