"""Writing files so that nothing is ever half-written: one atomic-write helper for every file the project saves.

`atomic_write(path, write)` lets `write(tmp)` fill a temporary file beside `path`, flushes it to disk
(fsync), gives it the permissions an ordinary new file gets (0o666 minus the umask; `mkstemp` alone would
leave 0600) and renames it over `path`. A crash or an exception leaves the old file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0o022)  # read it (os has no getter); called once, at import
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open(path, "w") would give a new file


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> str:
    """Write `path` atomically: `write(tmp_path)` creates the content, then fsync, chmod, rename. → path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """A text file (UTF-8), atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, **kwargs) -> str:
    """A JSON file, atomically (`kwargs` go to json.dumps, e.g. allow_nan=False)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs))


class WriteFailed(RuntimeError):
    """A file of the run could not be written (disk full, read-only, gone): the message names the path and the
    cause; what was written before stays as it was (the writers here never leave a partial file)."""

    def __init__(self, path: str, error: BaseException, what: str = "", hint: str = ""):
        self.path, self.error = path, error
        cause = getattr(error, "strerror", None) or str(error) or type(error).__name__
        free = free_bytes(path)
        space = f"; {_size(free)} free on that disk" if free is not None and free < 16 << 20 else ""
        super().__init__(f"could not write {what + ' ' if what else ''}{path!r}: {cause}{space}{hint}")


def free_bytes(path: str) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent); None if unknown."""
    import shutil

    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log file; on failure the file is cut back to what it was (no partial line) and
    WriteFailed names it."""
    path = os.fspath(path)
    size = os.path.getsize(path) if os.path.exists(path) else 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
    except OSError as e:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise WriteFailed(path, e) from e
