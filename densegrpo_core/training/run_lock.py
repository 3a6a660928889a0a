"""One run per output folder: a lock on `out_dir`, and the checks a folder passes before a run writes into it.

The lock is the file `out_dir/.densegrpo.lock`, held with an exclusive `flock` for the whole run (POSIX) and
holding the holder's pid, host, start time and command line, so a refusal can name it. The kernel releases
a `flock` when its process dies, however it dies (kill -9 included): a lock file left by a dead run is stale
and the next run takes it over. Where `fcntl` does not exist (Windows) the file is created exclusively
instead, and a leftover one is taken over only when it names this host and a pid that is not running.

A second lock on the same folder from the same process (another thread, another Trainer) is refused too:
a `flock` belongs to an open file, not to a process.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".densegrpo.lock"

# what a previous run leaves in its out_dir: a fresh run there without --resume would mix with or clobber it
RUN_OUTPUTS = (
    "metrics.jsonl",
    "evals.jsonl",
    "lora.safetensors",
    "lora_diffusers.safetensors",
    "checkpoint",
    "samples",
    "tensorboard",
)


class OutDirError(ValueError):
    """out_dir cannot take this run: a file, not writable, locked by another run, or holding a previous run."""


class RunLockedError(OutDirError):
    """Another live run holds the lock on out_dir."""

    def __init__(self, out_dir: str, holder: dict):
        self.holder = holder
        super().__init__(
            f"out_dir {out_dir!r} is in use by another run ({describe_holder(holder)}); wait for it to end or "
            f"choose another out_dir"
        )


def describe_holder(holder: dict) -> str:
    """'pid 123 on host h, started 2026-01-01 12:00:00, command: ...' from a lock file's content."""
    parts = [f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    if holder.get("command"):
        parts.append(f"command: {holder['command']}")
    return ", ".join(parts)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) terminates the process on Windows: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def read_holder(out_dir: str) -> dict | None:
    """The content of out_dir's lock file ({pid, host, started, command}), or None when there is none."""
    try:
        with open(os.path.join(out_dir, LOCK_NAME), encoding="utf-8") as f:
            return json.loads(f.read() or "null")
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def check_out_dir(out_dir: str) -> None:
    """OutDirError unless `out_dir` is a folder or can be made one (created if missing); whether it can be
    written is what creating the lock file finds out."""
    path = os.path.abspath(out_dir)
    probe = path
    while not os.path.exists(probe):  # the deepest existing ancestor decides
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        what = "out_dir" if probe == path else f"out_dir's parent {probe!r}"
        raise OutDirError(f"{what} is a file, not a folder (out_dir = {out_dir!r}); choose a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutDirError(f"cannot create out_dir {out_dir!r}: {e.strerror or e}") from None


def previous_run(out_dir: str) -> list[str]:
    """The outputs of a previous run in `out_dir` (RUN_OUTPUTS and numbered checkpoints), sorted."""
    try:
        names = os.listdir(out_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n in RUN_OUTPUTS or n.startswith("checkpoint-"))


def remove_previous_run(out_dir: str) -> list[str]:
    """Delete the outputs of a previous run in `out_dir` (what --overwrite does); other files stay. → names."""
    import shutil

    names = previous_run(out_dir)
    for name in names:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return names


class RunLock:
    """The lock on `out_dir`: `acquire()` (RunLockedError naming the holder if a live run has it), `release()`,
    or `with RunLock(out_dir):`. `taken_over` holds the stale holder it replaced, if any."""

    def __init__(self, out_dir: str, command: str | None = None):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.command = command if command is not None else " ".join(sys.argv)
        self.fd: int | None = None
        self.taken_over: dict | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _content(self) -> bytes:
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": self.command,
            }
        ).encode()

    def acquire(self) -> "RunLock":
        if self.held:
            return self
        check_out_dir(self.out_dir)
        try:
            (self._acquire_flock if fcntl is not None else self._acquire_exclusive)()
        except OSError as e:  # read-only file system, no permission, disk full
            raise OutDirError(
                f"cannot write in out_dir {self.out_dir!r} (creating its lock file {LOCK_NAME}): {e.strerror or e}; "
                f"choose a writable folder"
            ) from None
        return self

    def _acquire_flock(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunLockedError(self.out_dir, read_holder(self.out_dir) or {}) from None
            try:  # the holder before us may have unlinked the file between our open and our flock: retry
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = os.read(fd, 1 << 16)
        if old.strip():
            try:
                self.taken_over = json.loads(old)
            except ValueError:
                self.taken_over = {}
        self._write(fd)
        self.fd = fd

    def _acquire_exclusive(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_holder(self.out_dir) or {}
                stale = holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1)))
                if not stale:
                    raise RunLockedError(self.out_dir, holder) from None
                self.taken_over = holder
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            self._write(fd)
            self.fd = fd
            return
        raise RunLockedError(self.out_dir, read_holder(self.out_dir) or {})

    def _write(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, self._content())
        os.fsync(fd)

    def release(self) -> None:
        """Remove the lock file and let go (also when removing fails: closing the file releases the lock)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
