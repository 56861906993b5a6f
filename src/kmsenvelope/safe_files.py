"""Regular files only, changed safely: opened without following links, replaced atomically and
synced, locked, and repaired after a torn append; whose files they are is the caller's to say.

A symbolic link (or a FIFO, a device) planted where a file is expected is refused, never
followed or blocked on: the caller's :class:`Refusal` says with which error and rule. Nothing but
a regular file is ever replaced: a file the user names (a backup) that is a symbolic link has the
file it points to replaced, the link stays; a device, FIFO, socket or directory is refused, as
the CLI's outputs do (``cli/output.py``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = [
    "REFUSE",
    "Refusal",
    "atomic_write",
    "drop_torn_tail",
    "ensure_private_dir",
    "locked",
    "open_regular",
    "read_regular",
    "replaceable_target",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# /proc/self/fd/1, /proc/PID/task/TID/fd/3, /dev/fd/1: names of a descriptor already open.
_DESCRIPTOR_PATH = re.compile(r"/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd/\d+|/dev/fd/\d+")


@dataclass(frozen=True, slots=True)
class Refusal:
    """How the owner of some files refuses one that is not a regular file: the error it raises
    and the rule its one-line message states (e.g. the keystore's ``KeystoreError``)."""

    error: Callable[[str], Exception]
    rule: str

    def not_regular(self, path: Path, what: str) -> Exception:
        """The error for ``path``, found to be ``what`` (``"a symbolic link"``, ...)."""
        return self.error(f"{path} is {what}: {self.rule}")

    def not_replaced(self, path: Path, what: str) -> Exception:
        """The error for ``path``, found to be ``what`` when it was about to be replaced."""
        return self.error(f"{path} is {what}, not a regular file: not replaced")


REFUSE = Refusal(ConfigError, "only a regular file is used here (refusing to use it)")
"""The refusal for files no one more specific owns (a migration journal)."""


def open_regular(path: Path, flags: int, mode: int = 0o600, *, refuse: Refusal = REFUSE) -> int:
    """``os.open`` that refuses symbolic links and anything but a regular file.

    ``FileNotFoundError`` passes through (callers decide what a missing file means); a
    symbolic link, FIFO, device or directory is ``refuse``'s error.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refuse.not_regular(path, "a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise refuse.not_regular(path, "not a regular file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refuse.not_regular(path, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, *, refuse: Refusal = REFUSE) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`open_regular`)."""
    fd = open_regular(path, os.O_RDONLY, refuse=refuse)
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


def _kind(mode: int) -> str:
    """What a file of ``mode`` is, for a message."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def _names_descriptor(path: Path) -> bool:
    """Does ``path`` lead through /proc/.../fd or /dev/fd (``/dev/stdout``) to a descriptor
    already open? Replacing what such a name resolves to would not write to that descriptor."""
    current = os.path.abspath(path)
    for _ in range(40):
        full = os.path.join(os.path.realpath(os.path.dirname(current)), os.path.basename(current))
        if _DESCRIPTOR_PATH.fullmatch(full):
            return True
        if not os.path.islink(full):
            return False
        current = os.path.join(os.path.dirname(full), os.readlink(full))
    return False


def replaceable_target(path: Path, what: str) -> Path:
    """The file that writing ``what`` (a file the user named, e.g. a backup) to ``path``
    replaces: ``path`` itself, or the file a symbolic link names (so the link stays a link).

    ``ConfigError`` for a directory, device, FIFO or socket, or a name of an open descriptor
    (``/dev/stdout``): ``what`` is a file, never written through nor put in their place.
    """
    try:
        st = os.stat(path)  # follows links: what the name leads to
    except FileNotFoundError:
        st = None  # nothing there, or a link to a file not yet created
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{what} target {path} is a symbolic link loop") from None
        raise
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"{what} target {path} is {_kind(st.st_mode)}: a {what} is written to a regular "
            "file (refusing to replace it or write through it)"
        )
    if _names_descriptor(path):
        raise ConfigError(
            f"{what} target {path} names an open file descriptor: a {what} is written to a "
            "file by name (give the file's own path)"
        )
    return Path(os.path.realpath(path))


def _check_replaceable(path: Path, refuse: Refusal) -> None:
    """Refuse at the last moment if ``path`` is there and is not a regular file (it was
    swapped while the new content was written): only a regular file is ever replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise refuse.not_replaced(path, _kind(mode))


def atomic_write(path: Path, data: bytes, *, refuse: Refusal = REFUSE) -> None:
    """Write ``data`` to ``path`` (mode 0600) via a synced temp file and ``os.replace``.

    A crash leaves either the old file or the new one, never a mix; the temp file is removed
    on any error. ``path`` is replaced only if it is a regular file or absent: a symbolic link,
    device, FIFO, socket or directory there is refused (``refuse``'s error), never replaced.
    """
    _check_replaceable(path, refuse)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _check_replaceable(path, refuse)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def locked(lock_path: Path, *, exclusive: bool = True, refuse: Refusal = REFUSE) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``lock_path`` (shared or exclusive) for the block.

    Serializes changes across threads and processes on the same machine.
    """
    fd = open_regular(lock_path, os.O_RDWR | os.O_CREAT, refuse=refuse)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def drop_torn_tail(path: Path, *, refuse: Refusal = REFUSE) -> None:
    """Cut a last line left without its newline by a process killed mid-append (an
    append-only JSON-lines file), so the next record starts on a line of its own."""
    try:
        fd = open_regular(path, os.O_RDWR, refuse=refuse)
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
