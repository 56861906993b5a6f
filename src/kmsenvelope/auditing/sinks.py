"""Where audit events go: ``jsonl:PATH``, ``syslog``, ``logging`` (see :func:`make_sink`).

``jsonl:PATH`` appends one JSON object per line to a regular file (opened ``O_APPEND``, never
through a symbolic link, FIFO or device; created owner-only, 0600) and syncs it by the
``audit_sync`` setting (:mod:`kmsenvelope.durability`): each line is written before the
operation it records returns, and fsynced at once (``always``) or within the group-commit
window (``batch``). ``syslog`` sends the line to the system logger (facility ``auth`` or
``user``, priority ``info``); ``logging`` logs it at INFO on the ``kmsenvelope.audit`` logger,
with the event's fields as the record's ``audit`` attribute.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Protocol

from ..config import SinkSpec, parse_sink
from ..durability import DEFAULT_SYNC, GroupCommit, SyncMode
from ..errors import AuditSinkError
from ..safe_files import Refusal, open_regular
from .events import AuditEvent

__all__ = [
    "AUDIT_LOGGER",
    "AuditSinkError",
    "JsonlSink",
    "LoggingSink",
    "Sink",
    "SyslogSink",
    "make_sink",
]

AUDIT_LOGGER = "kmsenvelope.audit"


class _Refused(OSError):
    """A jsonl sink's path is a symbolic link, FIFO, device or directory."""


_REFUSE = Refusal(_Refused, "an audit log is appended to a regular file only (refusing it)")


class Sink(Protocol):
    """Takes one event (and its JSON line); raises when it could not."""

    @property
    def name(self) -> str:
        """The sink as configured (``jsonl:/var/log/…``), for messages."""
        ...

    def emit(self, event: AuditEvent, line: str) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends JSON lines to ``path``; opened on the first event (and again after a failed
    open, or when the name no longer leads to the open file: rotated or removed), synced by
    ``sync`` through a :class:`~kmsenvelope.durability.GroupCommit`."""

    def __init__(self, path: str | os.PathLike[str], sync: SyncMode = DEFAULT_SYNC) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._identity: tuple[int, int] = (0, 0)
        self._retired: list[int] = []  # files rotated away: synced, then closed, by _fsync
        self._lock = threading.Lock()
        self._commit = GroupCommit(self._fsync, sync)

    @property
    def name(self) -> str:
        return f"jsonl:{self.path}"

    @property
    def sync(self) -> SyncMode:
        return self._commit.mode

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r}, sync={self.sync!r})"

    def emit(self, event: AuditEvent, line: str) -> None:
        data = (line + "\n").encode("ascii")
        with self._lock:
            _write_all(self._current(), data)
        self._commit.appended()

    def flush(self) -> None:
        self._commit.flush()

    def close(self) -> None:
        try:
            self._commit.close()
        finally:
            with self._lock:
                fds, self._retired = [*self._retired, self._fd], []
                self._fd = None
            for fd in fds:
                if fd is not None:
                    os.close(fd)

    def _current(self) -> int:
        """The open file, reopened if ``path`` now names another file or none (rotation)."""
        if self._fd is not None:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == self._identity:
                return self._fd
            self._retired.append(self._fd)
            self._fd = None
        return self._open()

    def _open(self) -> int:
        """Open (creating it 0600) for appending; a line left torn by a killed writer gets
        its newline first, so the next event starts a line of its own."""
        existed = os.path.lexists(self.path)
        fd = open_regular(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600, refuse=_REFUSE)
        try:
            st = os.fstat(fd)
            if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
                raise _Refused(  # others could edit the trail: an audit log is not shared
                    f"{self.path} is writable by group or others, or owned by another user "
                    f"(uid {st.st_uid}): an audit log must be yours and not writable by others"
                )
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                _write_all(fd, b"\n")
            if not existed:  # the new name must survive a power cut too
                _fsync_dir(self.path.parent)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        return fd

    def _fsync(self) -> None:
        with self._lock:
            fd, retired, self._retired = self._fd, self._retired, []
        try:
            for old in retired:
                os.fsync(old)
        finally:
            for old in retired:
                os.close(old)
        if fd is not None:
            os.fsync(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SyslogSink:
    """The event's JSON line to the system logger (stdlib :mod:`syslog`, ``/dev/log``).

    The C library drops a message it cannot deliver without telling: this sink never fails,
    so use ``jsonl`` where every event must be acknowledged. The identity is the process's
    (``openlog`` is left to the application, whose own syslog setup it would change).
    """

    def __init__(self, facility: str = "auth") -> None:
        import syslog

        self.facility = facility
        self._syslog = syslog.syslog
        codes = {"auth": syslog.LOG_AUTH, "user": syslog.LOG_USER}
        self._priority = codes[facility] | syslog.LOG_INFO

    @property
    def name(self) -> str:
        return f"syslog:{self.facility}"

    def __repr__(self) -> str:
        return f"SyslogSink({self.facility!r})"

    def emit(self, event: AuditEvent, line: str) -> None:
        self._syslog(self._priority, line)

    def flush(self) -> None:
        """Nothing is buffered here."""

    def close(self) -> None:
        """Nothing to close (the syslog connection is the process's)."""


class LoggingSink:
    """The event as a JSON message at INFO on ``kmsenvelope.audit``; the record's ``audit``
    attribute holds the fields as a dict (for structured handlers)."""

    def __init__(self, logger: str = AUDIT_LOGGER) -> None:
        self._logger = logging.getLogger(logger)

    @property
    def name(self) -> str:
        return "logging"

    def __repr__(self) -> str:
        return f"LoggingSink({self._logger.name!r})"

    def emit(self, event: AuditEvent, line: str) -> None:
        self._logger.info(line, extra={"audit": event.as_dict()})

    def flush(self) -> None:
        """Handlers flush themselves."""

    def close(self) -> None:
        """The logger is the application's."""


_SHARED: dict[tuple[str, SyncMode], JsonlSink] = {}
_SHARED_LOCK = threading.Lock()


def make_sink(spec: str | SinkSpec, sync: SyncMode = DEFAULT_SYNC) -> Sink:
    """The sink a configuration string names (``jsonl:PATH``, ``syslog[:auth|:user]``,
    ``logging``); ``ConfigError`` for anything else. ``sync`` applies to ``jsonl``.

    One :class:`JsonlSink` per path and ``sync`` serves the whole process (every engine built
    from a configuration): one open file and one group commit, not one per engine."""
    parsed = parse_sink(spec) if isinstance(spec, str) else spec
    if parsed.kind == "jsonl":
        with _SHARED_LOCK:
            sink = _SHARED.get((parsed.target, sync))
            if sink is None:
                sink = _SHARED[(parsed.target, sync)] = JsonlSink(parsed.target, sync)
        return sink
    if parsed.kind == "syslog":
        return SyslogSink(parsed.target or "auth")
    return LoggingSink()
