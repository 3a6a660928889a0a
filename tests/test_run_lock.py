"""One run per out_dir (docs/robustness.md): the lock names its holder, a dead holder's lock is taken over, a
folder that cannot take a run is refused before any work, and a previous run is not silently mixed with."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from densegrpo_core.training import run_lock
from densegrpo_core.training.run_lock import OutDirError, RunLock, RunLockedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = (
    "import sys, time\n"
    "from densegrpo_core.training.run_lock import RunLock\n"
    "lock = RunLock(sys.argv[1], command='holder').acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(60)\n"
)


def holder_process(out):
    """A process holding the lock on `out` (until killed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_the_lock_file_names_the_holder_and_goes_away_on_release(tmp_path):
    with RunLock(str(tmp_path), command="train x") as lock:
        holder = run_lock.read_holder(str(tmp_path))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["command"] == "train x" and holder["started"][:4].isdigit()
        assert lock.held
    assert not os.path.exists(tmp_path / run_lock.LOCK_NAME)


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    with RunLock(str(tmp_path)):
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {os.getpid()} on host"):
            RunLock(str(tmp_path)).acquire()


def test_a_lock_held_by_a_live_process_is_refused_naming_pid_host_and_start(tmp_path):
    p = holder_process(tmp_path)
    try:
        with pytest.raises(RunLockedError) as e:
            RunLock(str(tmp_path)).acquire()
        msg = str(e.value)
        assert f"pid {p.pid} on host {socket.gethostname()}" in msg and "started 20" in msg
        assert "command: holder" in msg and "choose another out_dir" in msg
    finally:
        p.kill()
        p.wait()


def test_the_lock_of_a_killed_process_is_stale_and_taken_over(tmp_path):
    p = holder_process(tmp_path)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert run_lock.read_holder(str(tmp_path))["pid"] == p.pid  # the file stays behind a kill -9
    lock = RunLock(str(tmp_path)).acquire()
    try:
        assert lock.taken_over["pid"] == p.pid
        assert run_lock.read_holder(str(tmp_path))["pid"] == os.getpid()
    finally:
        lock.release()


def test_a_trainer_refuses_an_out_dir_another_run_holds_before_any_iteration(tmp_path):
    from densegrpo_core.models.pipeline import load_pipeline
    from densegrpo_core.rewards import get_reward
    from densegrpo_core.training.trainer import TrainConfig, Trainer

    p = holder_process(tmp_path)
    try:
        cfg = TrainConfig(out_dir=str(tmp_path), steps=2, iterations=1, prompts_per_iteration=1, group_size=2)
        pipe, prompts, _ = load_pipeline("toy")
        t = Trainer(cfg, pipe, get_reward("toy"), prompts)
        with pytest.raises(RunLockedError, match=f"pid {p.pid}"):
            t.run()
        assert t.iteration_done == 0 and not os.path.exists(tmp_path / "metrics.jsonl")
    finally:
        p.kill()
        p.wait()


def test_an_out_dir_that_is_a_file_is_refused_by_name(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutDirError, match=r"out_dir is a file, not a folder \(out_dir = '.*f'\)"):
        RunLock(str(tmp_path / "f")).acquire()
    with pytest.raises(OutDirError, match=r"out_dir's parent '.*f' is a file"):
        RunLock(str(tmp_path / "f" / "run")).acquire()


def test_a_missing_out_dir_is_created(tmp_path):
    with RunLock(str(tmp_path / "a" / "b")):
        assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_dir_is_refused_by_name(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(OutDirError, match=r"cannot write in out_dir '.*ro' .*Permission denied"):
        RunLock(str(tmp_path / "ro")).acquire()


def test_previous_run_lists_only_what_a_run_writes(tmp_path):
    for name in ("metrics.jsonl", "lora.safetensors", "notes.txt", "config.toml"):
        (tmp_path / name).write_text("x")
    (tmp_path / "checkpoint-000004").mkdir()
    assert run_lock.previous_run(str(tmp_path)) == ["checkpoint-000004", "lora.safetensors", "metrics.jsonl"]
    assert run_lock.remove_previous_run(str(tmp_path)) == ["checkpoint-000004", "lora.safetensors", "metrics.jsonl"]
    assert sorted(os.listdir(tmp_path)) == ["config.toml", "notes.txt"]  # the user's own files stay


def test_a_lock_written_by_an_older_run_is_read_back_as_json(tmp_path):
    (tmp_path / run_lock.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "h", "started": "s"}))
    assert run_lock.describe_holder(run_lock.read_holder(str(tmp_path))) == "pid 1 on host h, started s"
    t0 = time.time()
    with RunLock(str(tmp_path)) as lock:  # nobody holds the flock: stale, whatever the file says
        assert lock.taken_over["pid"] == 1
    assert time.time() - t0 < 5
