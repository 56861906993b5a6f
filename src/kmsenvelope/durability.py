"""When appended audit records reach the disk: the ``audit_sync`` setting and group commit.

``audit_sync = "always"``: every record is fsynced before the operation it records returns.
``audit_sync = "batch"`` (the default): every record is *written* to its file before the
operation returns (so a killed or crashed process loses nothing it acknowledged: the data is in
the kernel), and one fsync covers every record written in the last ``BATCH_WINDOW_SECONDS`` or
``BATCH_MAX_RECORDS`` records, whichever comes first (group commit). A power cut or an operating
system crash can lose at most that window of records: at most 50 ms of them, never more than
1,000. Records are flushed when the process exits normally too.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Literal

from .errors import ConfigError

__all__ = [
    "BATCH_MAX_RECORDS",
    "BATCH_WINDOW_SECONDS",
    "DEFAULT_SYNC",
    "SYNC_ENV",
    "SYNC_MODES",
    "GroupCommit",
    "SyncMode",
    "flush_all",
    "parse_sync_mode",
]

SyncMode = Literal["always", "batch"]
SYNC_MODES: tuple[SyncMode, ...] = ("always", "batch")
DEFAULT_SYNC: SyncMode = "batch"
SYNC_ENV = "KMSENVELOPE_AUDIT_SYNC"
BATCH_WINDOW_SECONDS = 0.05
"""Longest time a written record waits for its fsync in ``batch`` mode."""
BATCH_MAX_RECORDS = 1000
"""Most records one fsync waits for in ``batch`` mode (the next record syncs at once)."""


def parse_sync_mode(value: object, *, source: str = "audit_sync") -> SyncMode:
    """``"always"`` or ``"batch"``; anything else is a ``ConfigError`` naming ``source``."""
    if value == "always":
        return "always"
    if value == "batch":
        return "batch"
    raise ConfigError(f'{source}: must be "always" or "batch", not {value!r}')


_LIVE: weakref.WeakSet[GroupCommit] = weakref.WeakSet()
_IDLE_WINDOWS = 20
"""The background thread ends after this many windows without a record (restarted by the
next one), so a writer that is dropped without :meth:`GroupCommit.close` leaves no thread."""


def flush_all() -> None:
    """Sync every record written so far by every group commit of this process (every open
    keystore's audit log): before copying the files, say. A sync that fails is raised by its
    own writer's next operation, as a failed background sync is."""
    for commit in list(_LIVE):
        commit._flush_for_all()


@atexit.register
def _flush_all_at_exit() -> None:
    flush_all()


def _after_fork_in_child() -> None:
    for commit in list(_LIVE):
        commit._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class GroupCommit:
    """Runs ``sync`` (an fsync and whatever goes with it) for the records a writer appends.

    Call :meth:`appended` after each record is written: with ``always`` it syncs at once; with
    ``batch`` a background thread syncs within ``window`` seconds, or the writer syncs inline
    once ``max_records`` are pending. A failed background sync is raised by the next
    :meth:`appended` or :meth:`flush`, so a failing disk fails operations instead of being
    ignored. :meth:`flush` returns once every record appended before it is synced (waiting for
    a sync already running). Thread-safe; never call it while holding a lock ``sync`` takes.
    """

    def __init__(
        self,
        sync: Callable[[], None],
        mode: SyncMode = DEFAULT_SYNC,
        *,
        window: float = BATCH_WINDOW_SECONDS,
        max_records: int = BATCH_MAX_RECORDS,
    ) -> None:
        self._sync = sync
        self.mode: SyncMode = parse_sync_mode(mode)
        self._window = window
        self._max = max_records
        self._cond = threading.Condition()
        self._sync_lock = threading.Lock()
        self._pending = 0
        self._oldest = 0.0
        self._failure: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"GroupCommit(mode={self.mode!r}, pending={self._pending})"

    @property
    def pending(self) -> int:
        """Records written but not yet synced."""
        return self._pending

    def appended(self) -> None:
        """One more record was written: sync now (``always``) or within the window."""
        self._raise_failure()
        if self.mode == "always":
            self._run_sync(force=True)
            return
        with self._cond:
            self._pending += 1
            full = self._pending >= self._max
            if self._pending == 1:
                self._oldest = time.monotonic()
                if not full:
                    self._start_thread()
                    self._cond.notify()  # only an idle thread waits for the first record
        if full:
            self.flush()

    def synced(self) -> None:
        """Every record appended so far was synced by other means (the writer synced one that
        may not wait, which covers the earlier ones): nothing is pending."""
        with self._cond:
            self._pending = 0

    def flush(self) -> None:
        """Sync every pending record now (a no-op when none is pending)."""
        self._raise_failure()
        self._run_sync(force=False)

    def _flush_for_all(self) -> None:
        """Flush for :func:`flush_all`: a failure is kept for this writer, not raised."""
        if self._failure is not None:
            return
        try:
            self._run_sync(force=False)
        except Exception as exc:
            with self._cond:
                self._failure = exc

    def close(self) -> None:
        """Flush and stop the background thread."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join()

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None:
            self._failure = None
            raise failure

    def _run_sync(self, *, force: bool) -> None:
        # Under the sync lock: a flush that finds a sync running waits for it, then syncs
        # whatever was appended meanwhile.
        with self._sync_lock:
            with self._cond:
                count = self._pending
                if count == 0 and not force:
                    return
                self._pending = 0
            try:
                self._sync()
            except BaseException:
                with self._cond:
                    if self._pending == 0 and count:
                        self._oldest = time.monotonic()
                    self._pending += count
                raise

    def _start_thread(self) -> None:
        if self._closed:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._background, name="kmsenvelope-audit-sync", daemon=True
            )
            self._thread.start()

    def _background(self) -> None:
        while True:
            with self._cond:
                idle_until = time.monotonic() + _IDLE_WINDOWS * self._window
                while self._pending == 0 and not self._closed:
                    remaining = idle_until - time.monotonic()
                    if remaining <= 0:
                        self._thread = None  # the next record starts another
                        return
                    self._cond.wait(remaining)
                if self._closed:
                    return
                delay = self._oldest + self._window - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
            try:
                self._run_sync(force=False)
            except Exception as exc:  # raised to the next writer, never swallowed
                with self._cond:
                    self._failure = exc
                    self._oldest = time.monotonic()  # retry after another window, not in a spin

    def _forked(self) -> None:
        """In a child made by ``fork``: fresh locks and no thread (the parent's records are
        the parent's to sync)."""
        self._cond = threading.Condition()
        self._sync_lock = threading.Lock()
        self._pending = 0
        self._thread = None
