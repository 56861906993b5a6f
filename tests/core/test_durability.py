"""``kmsenvelope.durability``: the ``audit_sync`` setting and group commit.

``always`` syncs inside each ``appended()``; ``batch`` syncs from a background thread within the
window, or inline once ``max_records`` are pending, and a failed background sync fails the next
writer. The sync callables here are plain counters: group commit is tested on its own; the
keystore's audit log (tests/local/test_audit_group_commit.py) tests what it syncs.
"""

from __future__ import annotations

import threading
import time

import pytest

from kmsenvelope.durability import (
    BATCH_MAX_RECORDS,
    BATCH_WINDOW_SECONDS,
    DEFAULT_SYNC,
    SYNC_ENV,
    GroupCommit,
    flush_all,
    parse_sync_mode,
)
from kmsenvelope.errors import ConfigError

WINDOW = 0.02


class Syncs:
    """A sync callable that records the thread each call ran in."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.threads.append(threading.get_ident())

    @property
    def count(self) -> int:
        return len(self.threads)


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.002)
    return False


def test_the_setting_and_its_default() -> None:
    assert DEFAULT_SYNC == "batch"
    assert SYNC_ENV == "KMSENVELOPE_AUDIT_SYNC"
    assert (BATCH_WINDOW_SECONDS, BATCH_MAX_RECORDS) == (0.05, 1000)
    assert parse_sync_mode("always") == "always"
    assert parse_sync_mode("batch") == "batch"
    for bad in ("Always", "", None, 1, "never"):
        with pytest.raises(ConfigError, match=f'{SYNC_ENV}: must be "always" or "batch"'):
            parse_sync_mode(bad, source=SYNC_ENV)


def test_always_syncs_before_appended_returns() -> None:
    syncs = Syncs()
    commit = GroupCommit(syncs, "always")
    for n in range(1, 4):
        commit.appended()
        assert syncs.threads == [threading.get_ident()] * n
    assert commit.pending == 0


def test_batch_syncs_many_records_at_once_within_the_window() -> None:
    syncs = Syncs()
    commit = GroupCommit(syncs, "batch", window=WINDOW)
    for _ in range(50):
        commit.appended()
    assert syncs.count == 0  # nothing synced inline
    assert commit.pending == 50
    assert wait_for(lambda: commit.pending == 0 and syncs.count >= 1)
    assert syncs.count < 50  # one sync covered many records
    assert threading.get_ident() not in syncs.threads  # from the background thread
    commit.close()


def test_batch_never_waits_longer_than_a_few_windows() -> None:
    syncs = Syncs()
    commit = GroupCommit(syncs, "batch", window=WINDOW)
    for _ in range(5):
        commit.appended()
        start = time.monotonic()
        assert wait_for(lambda: commit.pending == 0, timeout=2.0)
        assert time.monotonic() - start < 25 * WINDOW
    assert syncs.count == 5
    commit.close()


def test_batch_syncs_inline_once_max_records_are_pending() -> None:
    syncs = Syncs()
    commit = GroupCommit(syncs, "batch", window=60.0, max_records=10)
    for _ in range(9):
        commit.appended()
    assert syncs.count == 0
    commit.appended()  # the 10th
    assert syncs.threads == [threading.get_ident()]
    assert commit.pending == 0
    commit.close()


def test_a_failed_background_sync_fails_the_next_writer() -> None:
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise OSError(5, "Input/output error")

    commit = GroupCommit(failing, "batch", window=WINDOW)
    commit.appended()
    assert wait_for(lambda: len(calls) >= 1)
    time.sleep(WINDOW)
    with pytest.raises(OSError, match="Input/output error"):
        commit.appended()
    assert commit.pending >= 1  # the records are still pending, not forgotten


def test_flush_waits_for_a_sync_already_running() -> None:
    started, gate = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> None:
        started.set()
        gate.wait(10)
        done.append("synced")

    commit = GroupCommit(slow, "batch", window=WINDOW)
    commit.appended()
    assert started.wait(5)  # the background sync took the record and is running
    flushed = threading.Event()
    flusher = threading.Thread(target=lambda: (commit.flush(), flushed.set()))
    flusher.start()
    assert not flushed.wait(0.2)  # the record is not on disk yet: flush must not return
    gate.set()
    assert flushed.wait(5)
    assert done
    flusher.join()
    commit.close()


def test_close_flushes_and_ends_the_thread() -> None:
    syncs = Syncs()
    commit = GroupCommit(syncs, "batch", window=60.0)
    before = set(threading.enumerate())
    commit.appended()
    started = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in started] == ["kmsenvelope-audit-sync"]
    commit.close()
    assert syncs.count == 1
    assert commit.pending == 0
    assert not started[0].is_alive()
    commit.close()  # again: nothing to do


def test_an_idle_background_thread_ends() -> None:
    syncs = Syncs()
    commit = GroupCommit(syncs, "batch", window=0.005)
    before = set(threading.enumerate())
    commit.appended()
    assert wait_for(lambda: syncs.count == 1)
    [thread] = [t for t in threading.enumerate() if t not in before]
    thread.join(5)  # no record for 20 windows: it ends rather than wait forever
    assert not thread.is_alive()
    commit.appended()  # and the next record starts another
    assert wait_for(lambda: syncs.count == 2)
    commit.close()


def test_flush_all_syncs_every_writer_and_leaves_failures_to_each() -> None:
    syncs = Syncs()
    good = GroupCommit(syncs, "batch", window=60.0)

    def failing() -> None:
        raise OSError(28, "No space left on device")

    bad = GroupCommit(failing, "batch", window=60.0)
    good.appended()
    bad.appended()
    flush_all()  # does not raise another writer's failure
    assert syncs.count == 1
    assert good.pending == 0
    with pytest.raises(OSError, match="No space left"):
        bad.appended()  # its own writer hears of it
    good.close()
