"""`train` against run-time failures (docs/robustness.md): two runs into one out_dir, a previous run, an out_dir
that is a file or read-only, a disk that fills up, SIGTERM and Ctrl-C; exit codes and messages, and a
resumed run equal to an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from kill_drill import TOY  # noqa: E402  (the small toy run every drill uses)

ITERATIONS = 4


def env(**extra):
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([ROOT, TESTS, os.environ.get("PYTHONPATH", "")]),
        **{k: str(v) for k, v in extra.items()},
    }


def train_args(tmp_path, *args, reward="durability_rewards:slow_toy"):
    config = tmp_path / "toy.toml"
    config.write_text(TOY)
    return [sys.executable, "-m", "densegrpo_core", "train", "--config", str(config), "--no-progress"] + [
        "--reward",
        reward,
        *map(str, args),
    ]


def train(tmp_path, *args, **extra):
    return subprocess.run(train_args(tmp_path, *args), capture_output=True, text=True, timeout=300, env=env(**extra))


def start(tmp_path, *args, **extra):
    return subprocess.Popen(
        train_args(tmp_path, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(**extra)
    )


def wait_for(predicate, timeout=120):
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.05)


def metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(ms):
    return [{k: v for k, v in m.items() if not k.endswith("_s") and "_bytes" not in k} for m in ms]


def lines_written(out):
    path = out / "metrics.jsonl"
    return path.exists() and len(path.read_text().splitlines()) >= 1


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted run of ITERATIONS iterations."""
    tmp = tmp_path_factory.mktemp("finished")
    r = train(tmp, "--out", tmp / "run", "--iterations", ITERATIONS)
    assert r.returncode == 0, r.stderr
    return tmp / "run"


def copy_run(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def test_a_finished_run_exits_0(finished):
    assert len(metrics(finished)) == ITERATIONS and os.readlink(finished / "checkpoint") == "checkpoint-000004"
    assert not (finished / ".densegrpo.lock").exists()


def test_every_evaluation_is_in_evals_jsonl_and_in_its_iterations_metrics_line(finished):
    evals = [json.loads(x) for x in (finished / "evals.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in evals] == [0, 2, 4]  # eval_every = 2, and the one before training
    by_iteration = {m["iteration"]: m for m in metrics(finished)}
    for e in evals[1:]:
        assert by_iteration[e["iteration"]]["eval"] == {k: v for k, v in e.items() if k != "iteration"}
    assert "eval" not in by_iteration[1] and "eval" not in by_iteration[3]


def test_two_runs_into_one_out_dir_give_one_refusal_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    first = start(tmp_path, "--out", out, "--iterations", 3, DENSEGRPO_TEST_SLEEP=0.3)
    try:
        wait_for(lambda: (out / ".densegrpo.lock").exists())
        second = train(tmp_path, "--out", out, "--iterations", 3)
        assert second.returncode == 2, second.stderr
        assert f"is in use by another run (pid {first.pid} on host" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert [m["iteration"] for m in metrics(out)] == [1, 2, 3]  # the first run's lines only


def test_a_previous_run_is_refused_without_resume_or_overwrite(finished, tmp_path):
    out = copy_run(finished, tmp_path)
    r = train(tmp_path, "--out", out, "--iterations", 2)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "holds a previous run (checkpoint, checkpoint-000004, evals.jsonl, lora.safetensors, metrics.jsonl)" in (
        r.stderr
    )
    assert f"--resume {out}" in r.stderr and "--overwrite" in r.stderr
    assert len(metrics(out)) == ITERATIONS  # untouched


def test_overwrite_replaces_the_previous_run(finished, tmp_path):
    out = copy_run(finished, tmp_path)
    (out / "notes.txt").write_text("mine")
    r = train(tmp_path, "--out", out, "--iterations", 1, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert [m["iteration"] for m in metrics(out)] == [1]
    assert os.readlink(out / "checkpoint") == "checkpoint-000001" and (out / "notes.txt").read_text() == "mine"


def test_resume_continues_the_out_dir_given_as_such(finished, tmp_path):
    out = tmp_path / "run"
    r = train(tmp_path, "--out", out, "--iterations", 2)
    assert r.returncode == 0, r.stderr
    r = train(tmp_path, "--resume", out, "--iterations", ITERATIONS)
    assert r.returncode == 0, r.stderr
    assert comparable(metrics(out)) == comparable(metrics(finished))


def test_an_out_dir_that_is_a_file_exits_2_before_any_work(tmp_path):
    (tmp_path / "run").write_text("x")
    r = train(tmp_path, "--out", tmp_path / "run", "--iterations", 1)
    assert r.returncode == 2, r.stderr
    out = tmp_path / "run"
    assert r.stderr.strip() == f"error: out_dir is a file, not a folder (out_dir = '{out}'); choose a folder"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_iteration_saves_and_exits_3(finished, tmp_path, sig):
    out = tmp_path / "run"
    p = start(tmp_path, "--out", out, "--iterations", ITERATIONS, DENSEGRPO_TEST_SLEEP=0.5)
    wait_for(lambda: lines_written(out))
    p.send_signal(sig)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 3, stderr
    done = len(metrics(out))
    assert done < ITERATIONS and f"stopped after iteration {done} of {ITERATIONS}" in stderr
    assert f"--resume {out}" in stderr
    assert os.readlink(out / "checkpoint") == f"checkpoint-{done:06d}"
    r = train(tmp_path, "--resume", out / "checkpoint")
    assert r.returncode == 0, r.stderr
    assert comparable(metrics(out)) == comparable(metrics(finished))


def test_a_repeated_signal_within_the_window_is_the_same_stop_request(tmp_path):
    """What a worker gets under torchrun or a scheduler: the terminal's Ctrl-C and the launcher's copy."""
    out = tmp_path / "run"
    p = start(tmp_path, "--out", out, "--iterations", ITERATIONS, DENSEGRPO_TEST_SLEEP=0.5)
    wait_for(lambda: lines_written(out))
    p.send_signal(signal.SIGINT)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 3, stderr
    assert os.readlink(out / "checkpoint") == f"checkpoint-{len(metrics(out)):06d}"


def test_a_second_signal_after_the_window_aborts_with_130(tmp_path):
    out = tmp_path / "run"
    p = start(tmp_path, "--out", out, "--iterations", ITERATIONS, DENSEGRPO_TEST_SLEEP=8)
    wait_for(lambda: lines_written(out))
    time.sleep(1)  # inside iteration 2's reward call (8 s)
    p.send_signal(signal.SIGINT)
    time.sleep(2.5)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "aborted without saving" in stderr.strip().splitlines()[-1]
    assert not (out / ".densegrpo.lock").exists()


def userns_available():
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_userns = pytest.mark.skipif(
    not userns_available(), reason="needs `unshare -rm` (user and mount namespaces) to mount a small tmpfs"
)


def in_namespace(script: str, **extra):
    """`script` (sh) run as root of a new user + mount namespace, where it may mount file systems."""
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300, env=env(**extra)
    )


@needs_userns
def test_a_read_only_out_dir_exits_2_naming_it(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    cmd = " ".join(f"'{a}'" for a in train_args(tmp_path, "--out", mnt, "--iterations", 1))
    r = in_namespace(f"mount -t tmpfs -o size=1m,ro tmpfs '{mnt}' && {cmd}")
    assert r.returncode == 2, r.stderr
    assert f"error: cannot write in out_dir '{mnt}'" in r.stderr and "Read-only file system" in r.stderr


@needs_userns
def test_a_full_disk_exits_1_naming_the_path_and_the_run_resumes_exactly(finished, tmp_path):
    """The reward fills the disk in iteration 3: the next write fails, named; nothing half-written stays; with
    space again the run resumes and ends as the uninterrupted one."""
    mnt, keep = tmp_path / "disk", tmp_path / "kept"
    mnt.mkdir()
    out = mnt / "run"
    first = " ".join(f"'{a}'" for a in train_args(tmp_path, "--out", out, reward="durability_rewards:fill_disk"))
    resume = " ".join(f"'{a}'" for a in train_args(tmp_path, "--resume", out))
    script = (
        f"mount -t tmpfs -o size=8m tmpfs '{mnt}' || exit 99\n"
        f'{first} --iterations {ITERATIONS}; echo "first=$?"\n'
        f"ls -A '{out}'; echo; cat '{out}'/metrics.jsonl | wc -l; rm '{mnt}/filler'\n"
        f'{resume} --iterations {ITERATIONS}; echo "resumed=$?"\n'
        f"cp -r '{out}' '{keep}'\n"
    )
    r = in_namespace(script, DENSEGRPO_TEST_AT=5, DENSEGRPO_TEST_FILL=mnt)
    assert "first=1" in r.stdout, (r.stdout, r.stderr)
    failure = [line for line in r.stderr.splitlines() if line.startswith("failed:")]
    assert len(failure) == 1 and "No space left on device" in failure[0] and f"'{out}" in failure[0], r.stderr
    assert "is intact" in failure[0] and f"--resume '{out}'" in failure[0]
    listing = r.stdout.split("first=1")[1].split("resumed=")[0]
    assert ".checkpoint-" not in listing and ".tmp" not in listing  # no half-written temporary left
    assert "resumed=0" in r.stdout, r.stderr
    assert comparable(metrics(keep)) == comparable(metrics(finished))
