"""Owner-only, atomic, locked file operations for the local keystore."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "drop_torn_tail", "ensure_private_dir", "locked"]


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if missing; tighten it if it exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) via a synced temp file and ``os.replace``.

    A crash leaves either the old file or the new one, never a mix; the temp file is removed
    on any error.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def locked(lock_path: Path, *, exclusive: bool = True) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``lock_path`` (shared or exclusive) for the block.

    Serializes keystore changes across threads and processes on the same machine.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def drop_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline by a process killed mid-append (an
    append-only JSON-lines file), so the next record starts on a line of its own."""
    try:
        fh = path.open("r+b")
    except FileNotFoundError:
        return
    with fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(max(0, size - 65536))
        tail = fh.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        fh.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)
        os.fsync(fh.fileno())
