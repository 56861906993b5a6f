"""Owner-only, atomic, locked file operations for the local keystore.

Every keystore file is opened with ``O_NOFOLLOW`` and checked to be a regular file, so a
symbolic link (or a FIFO, a device) planted in the keystore directory is refused, never
followed or blocked on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import KeystoreError

__all__ = [
    "atomic_write",
    "drop_torn_tail",
    "ensure_private_dir",
    "locked",
    "open_regular",
    "read_regular",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _not_regular(path: Path, what: str) -> KeystoreError:
    return KeystoreError(
        f"{path} is {what}: keystore files must be regular files (refusing to use it)"
    )


def open_regular(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses symbolic links and anything but a regular file.

    ``FileNotFoundError`` passes through (callers decide what a missing file means); a
    symbolic link, FIFO, device or directory is a ``KeystoreError``.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _not_regular(path, "a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise _not_regular(path, "not a regular file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_regular(path, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`open_regular`)."""
    fd = open_regular(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


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
    fd = open_regular(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def drop_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline by a process killed mid-append (an
    append-only JSON-lines file), so the next record starts on a line of its own."""
    try:
        fd = open_regular(path, os.O_RDWR)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "r+b") as fh:
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
