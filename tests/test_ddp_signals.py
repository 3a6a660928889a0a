"""`train` under a 2-rank torchrun (gloo, CPU) against signals and a frozen rank (docs/robustness.md): Ctrl-C
keeps its promise on every rank (same iteration, rank 0 saves, resumable), and a SIGSTOPped rank ends the run
within the process-group timeout with a message naming it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from kill_drill import TOY  # noqa: E402  (the small toy run every drill uses)

ITERATIONS = 5

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc (Linux)"),
    pytest.mark.slow,
]


def torchrun(tmp_path, *args, reward="durability_rewards:slow_toy", **extra):
    """(argv, env) of `torchrun --nproc_per_node 2 -m densegrpo_core train` on the toy config."""
    config = tmp_path / "toy.toml"
    config.write_text(TOY)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    argv += ["-m", "densegrpo_core", "train", "--config", str(config), "--no-progress", "--reward", reward]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([ROOT, TESTS, os.environ.get("PYTHONPATH", "")]),
        "PET_SHUTDOWN_TIMEOUT": "60",  # torchrun's grace before SIGKILL (its default is 30 s)
        **{k: str(v) for k, v in extra.items()},
    }
    return argv + [str(a) for a in args], env


def run(tmp_path, *args, **extra):
    argv, env = torchrun(tmp_path, *args, **extra)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)


def metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(ms):
    return [{k: v for k, v in m.items() if not k.endswith("_s") and "_bytes" not in k} for m in ms]


def workers(pid):
    """{rank: pid} of torchrun `pid`'s worker processes."""
    found = {}
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1] == str(pid):
                env = dict(x.split("=", 1) for x in open(f"/proc/{d}/environ").read().split("\0") if "=" in x)
                found[int(env["RANK"])] = int(d)
        except (OSError, KeyError):
            pass
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_full")
    r = run(tmp, "--out", tmp / "run", "--iterations", ITERATIONS)
    assert r.returncode == 0, r.stderr[-3000:]
    return metrics(tmp / "run")


@pytest.mark.parametrize("who", ["terminal_and_torchrun", "one_rank"])
def test_sigint_under_torchrun_stops_every_rank_at_one_iteration_saves_and_resumes(tmp_path, uninterrupted, who):
    """terminal_and_torchrun: Ctrl-C reaches torchrun, which forwards it, and every worker directly (a scheduler
    signalling all processes): each worker gets two SIGINTs. one_rank: only rank 1 is signalled; the stop flag
    is shared at the iteration boundary, so rank 0 stops at the same iteration and saves."""
    out = tmp_path / "run"
    argv, env = torchrun(tmp_path, "--out", out, "--iterations", ITERATIONS, DENSEGRPO_TEST_SLEEP=0.4)
    p = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        t0 = time.time()
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 1):
            assert time.time() - t0 < 240 and p.poll() is None, "the run did not start"
            time.sleep(0.05)
        time.sleep(0.3)  # inside iteration 2
        ranks = workers(p.pid)
        assert sorted(ranks) == [0, 1]
        if who == "terminal_and_torchrun":
            os.killpg(p.pid, signal.SIGINT)
            for pid in ranks.values():
                os.kill(pid, signal.SIGINT)
        else:
            os.kill(ranks[1], signal.SIGINT)
        _, stderr = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    done = len(metrics(out))
    assert 1 <= done < ITERATIONS, stderr[-3000:]
    assert f"[densegrpo] stopped after iteration {done} of {ITERATIONS}; checkpoint saved" in stderr, stderr[-3000:]
    assert f"[densegrpo] rank 1: stopped after iteration {done}" in stderr
    assert "aborted without saving" not in stderr  # the repeated SIGINT did not take the abort path
    if who == "one_rank":  # torchrun reports its workers' exit codes: 3 = stopped
        assert stderr.count("exitcode  : 3") == 2, stderr[-3000:]
    assert os.readlink(out / "checkpoint") == f"checkpoint-{done:06d}"
    r = run(tmp_path, "--resume", out, "--iterations", ITERATIONS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert comparable(metrics(out)) == comparable(uninterrupted)


def test_a_frozen_rank_ends_the_run_within_the_timeout_naming_it(tmp_path):
    """Rank 1 SIGSTOPs itself in iteration 2's reward; rank 0 waits 5 s (--dist-timeout-s) in the reward
    gather, then ends the run naming rank 1; torchrun kills the frozen one."""
    out = tmp_path / "run"
    argv, env = torchrun(
        tmp_path,
        "--out",
        out,
        "--iterations",
        ITERATIONS,
        "--dist-timeout-s",
        5,
        reward="durability_rewards:freeze_rank1",
        DENSEGRPO_TEST_AT=3,
        PET_SHUTDOWN_TIMEOUT=2,
    )
    t0 = time.time()
    p = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0
    failure = [line for line in stderr.splitlines() if line.startswith("failed: rank 0:")]
    assert len(failure) == 1, stderr[-3000:]
    assert "rank 1 (" in failure[0] and "not responding for" in failure[0]
    assert "did not complete 'gather rewards (iteration 2)' (waited 5 s; dist_timeout_s = 5 s)" in failure[0]
    assert os.readlink(out / "checkpoint") == "checkpoint-000001"  # the last save before the freeze
    assert not (out / ".densegrpo.lock").exists()
    assert time.time() - t0 < 120
