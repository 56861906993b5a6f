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
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = [
    "REFUSE",
    "FileLock",
    "Refusal",
    "atomic_write",
    "drop_torn_tail",
    "ensure_private_dir",
    "finish_replace",
    "fsync_dir",
    "locked",
    "open_regular",
    "prepare_replace",
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


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a file renamed into it) durable."""
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


def prepare_replace(path: Path, data: bytes) -> str:
    """A synced temp file holding ``data`` next to ``path`` (mode 0600), for
    :func:`finish_replace`: the slow part of :func:`atomic_write`, done before taking a lock."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def finish_replace(tmp: str, path: Path, *, refuse: Refusal = REFUSE) -> None:
    """Rename ``tmp`` (from :func:`prepare_replace`) over ``path`` if that is a regular file or
    absent; the temp file is removed on any error. The caller then runs :func:`fsync_dir`."""
    try:
        _check_replaceable(path, refuse)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes, *, refuse: Refusal = REFUSE) -> None:
    """Write ``data`` to ``path`` (mode 0600) via a synced temp file and ``os.replace``.

    A crash leaves either the old file or the new one, never a mix; the temp file is removed
    on any error. ``path`` is replaced only if it is a regular file or absent: a symbolic link,
    device, FIFO, socket or directory there is refused (``refuse``'s error), never replaced.
    """
    _check_replaceable(path, refuse)
    finish_replace(prepare_replace(path, data), path, refuse=refuse)
    fsync_dir(path.parent)


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


class _Descriptor:
    """One descriptor of a file kept open, and the (device, inode) it was opened on."""

    __slots__ = ("fd", "ident")

    def __init__(self) -> None:
        self.fd: int | None = None
        self.ident: tuple[int, int] = (0, 0)

    def get(self, path: Path, refuse: Refusal, create: bool) -> int:
        if self.fd is None:
            fd = open_regular(path, os.O_RDWR | (os.O_CREAT if create else 0), refuse=refuse)
            st = os.fstat(fd)
            self.fd, self.ident = fd, (st.st_dev, st.st_ino)
        return self.fd

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class _Hold:
    """``with lock.exclusive:`` / ``with lock.shared:`` (a plain object: cheaper than a
    generator-based context manager on a path taken once per operation)."""

    __slots__ = ("_exclusive", "_lock")

    def __init__(self, lock: FileLock, exclusive: bool) -> None:
        self._lock = lock
        self._exclusive = exclusive

    def __enter__(self) -> None:
        self._lock.acquire(exclusive=self._exclusive)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


_LOCKS: weakref.WeakSet[FileLock] = weakref.WeakSet()


class FileLock:
    """An advisory ``flock`` on ``path`` taken through one descriptor kept open, instead of one
    opened per use (``with lock.exclusive:`` for a change, ``with lock.shared:`` for a read).

    Re-entrant in the thread that holds it (a nested hold never changes the lock's kind; asking
    for an exclusive hold inside a shared one is a ``RuntimeError``). Other threads wait on a
    mutex in front of the flock, since one descriptor's flock does not exclude threads; other
    processes, and other ``FileLock`` objects, wait on the flock. If ``path`` is replaced by
    another file the descriptor is reopened on it, so every user locks the same file. A child
    made by ``fork`` opens a descriptor of its own (an inherited one would share the lock).
    Callables given to :meth:`defer` run after the outermost release, in the releasing thread.
    """

    def __init__(self, path: Path, *, refuse: Refusal = REFUSE) -> None:
        self.path = path
        self._name = os.fspath(path)
        self._refuse = refuse
        self._mutex = threading.RLock()
        self._depth = 0
        self._exclusive = False
        self._deferred: list[Callable[[], None]] = []
        self.token = 0
        """Changes with every outermost hold: what was checked under one hold holds for it."""
        self._file = _Descriptor()
        finalizer = weakref.finalize(self, self._file.close)
        finalizer.atexit = False  # at exit the OS closes it; audit flushes still need it
        self.exclusive = _Hold(self, True)
        self.shared = _Hold(self, False)
        _LOCKS.add(self)

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r})"

    @property
    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        if not self._mutex.acquire(blocking=False):
            return False
        try:
            return self._depth > 0
        finally:
            self._mutex.release()

    @property
    def exclusive_now(self) -> bool:
        """Whether the calling thread's hold is exclusive (ask it while holding the lock)."""
        return self._exclusive and self._depth > 0

    def acquire(self, *, exclusive: bool = True, create: bool = True) -> None:
        """Take the lock (blocking); pair with :meth:`release`. ``create=False``: if the lock
        file is gone, ``FileNotFoundError`` instead of creating it (for work that only makes
        sense while the files it guards exist)."""
        self._mutex.acquire()
        if self._depth:
            if exclusive and not self._exclusive:
                self._mutex.release()
                raise RuntimeError(f"{self.path}: exclusive lock asked for inside a shared one")
            self._depth += 1
            return
        try:
            self._lock_file(fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, create)
        except BaseException:
            self._mutex.release()
            raise
        self._exclusive = exclusive
        self._depth = 1
        self.token += 1

    def _lock_file(self, operation: int, create: bool) -> None:
        for _ in range(100):
            fd = self._file.get(self.path, self._refuse, create)
            fcntl.flock(fd, operation)
            try:
                st = os.lstat(self._name)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == self._file.ident:
                return
            fcntl.flock(fd, fcntl.LOCK_UN)  # locked a file no longer at ``path``: lock that one
            self._file.close()
            if st is None and not create:
                raise FileNotFoundError(errno.ENOENT, "lock file removed", str(self.path))
        raise self._refuse.error(f"{self.path} keeps being replaced: cannot lock it")

    def release(self) -> None:
        """Release one hold; the outermost release unlocks, then runs the deferred calls."""
        deferred: list[Callable[[], None]] = []
        try:
            if self._depth == 1:
                deferred, self._deferred = self._deferred, []
                fd = self._file.fd
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._depth -= 1
            self._mutex.release()
        failure: BaseException | None = None
        for call in deferred:
            try:
                call()
            except BaseException as exc:  # every deferred call runs; the first failure is raised
                failure = failure or exc
        if failure is not None:
            raise failure

    def defer(self, call: Callable[[], None]) -> None:
        """Run ``call`` once the calling thread's outermost hold is released (hold it now)."""
        self._deferred.append(call)

    def close(self) -> None:
        """Close the descriptor (reopened by the next hold); a no-op while the lock is held."""
        with self._mutex:
            if self._depth == 0:
                self._file.close()

    def _forked(self) -> None:
        self._mutex = threading.RLock()
        self._depth = 0
        self._deferred = []
        self._file.close()


def _after_fork_in_child() -> None:
    for lock in list(_LOCKS):
        lock._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
