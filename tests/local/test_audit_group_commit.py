"""The keystore audit log's ``audit_sync`` setting: group commit, a head that lags, and the
keystore's per-operation caches (issue 13, "audit that keeps up").

``batch`` (the default) writes every wrap/unwrap record before the operation returns and fsyncs
them in groups, after which audit.head moves to the log's end; ``always`` fsyncs each record.
A missing fsync is invisible to a SIGKILL test (the page cache survives the process), so fsync
calls on audit.log are counted directly (``os.fsync`` wrapped, still calling the real one).
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from local_support import PASSPHRASE, StoreOracle, audit_entries, run_cli

import kmsenvelope
from kmsenvelope.durability import BATCH_WINDOW_SECONDS
from kmsenvelope.errors import AuditLogError, KeyDestroyedError, KeyDisabledError
from kmsenvelope.local import Keystore

CTX = {"app": "group-commit"}
SYNC_THREAD = "kmsenvelope-audit-sync"


def head(keystore_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((keystore_dir / "audit.head").read_text())
    return doc


def line_offsets(keystore_dir: Path) -> list[int]:
    """Byte offset of each line of audit.log (index 0: entry 1)."""
    offsets, at = [], 0
    for line in (keystore_dir / "audit.log").read_bytes().splitlines(keepends=True):
        offsets.append(at)
        at += len(line)
    return offsets


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def verify_cli(entries: int) -> None:
    proc = run_cli("audit", "verify")
    assert proc.returncode == 0, proc.stderr
    assert f"{entries} entries" in proc.stdout


@pytest.fixture
def log_fsyncs(keystore_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of every fsync of this test's audit.log, in this process."""
    calls: list[str] = []
    real = os.fsync
    log = os.path.realpath(keystore_dir / "audit.log")

    def counting(fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target == log:
            calls.append(threading.current_thread().name)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


# -- when records reach the disk -----------------------------------------------------------------


def test_always_fsyncs_each_record_before_the_operation_returns(
    keystore_dir: Path, log_fsyncs: list[str]
) -> None:
    store = Keystore.open(keystore_dir, PASSPHRASE, audit_sync="always")
    assert store.audit_sync == "always"
    store.create_key("k")
    for n in range(5):
        before = len(log_fsyncs)
        wrapped = store.wrap("k", None, os.urandom(32), CTX)
        assert log_fsyncs[before:] == ["MainThread"]  # this record, by the wrap itself
        store.unwrap("k", wrapped, CTX)
        assert log_fsyncs[before + 1 :] == ["MainThread"]
        entries = audit_entries(keystore_dir)
        assert head(keystore_dir)["seq"] == len(entries) == 2 + 2 * (n + 1)
    store.close()


def test_batch_is_the_default_and_syncs_records_in_groups(
    keystore_dir: Path, log_fsyncs: list[str]
) -> None:
    store = Keystore.open(keystore_dir, PASSPHRASE)
    assert store.audit_sync == "batch"
    store.create_key("k")  # a key change: synced and in the head at once, whatever the mode
    assert log_fsyncs == ["MainThread"]
    assert head(keystore_dir)["seq"] == 2
    start = time.monotonic()
    for _ in range(20):
        store.wrap("k", None, os.urandom(32), CTX)
    written = len(audit_entries(keystore_dir))
    assert written == 22  # every record is in the file when its wrap returns
    if time.monotonic() - start < BATCH_WINDOW_SECONDS:  # (a stalled machine could pass it)
        assert log_fsyncs == ["MainThread"]  # ... but not synced one by one
        assert head(keystore_dir)["seq"] == 2
    # within a few windows one fsync covers them, then the head moves to the log's end
    assert wait_for(lambda: head(keystore_dir)["seq"] == written, 20 * BATCH_WINDOW_SECONDS)
    assert SYNC_THREAD in log_fsyncs
    assert len(log_fsyncs) < 10  # a few group commits, not one fsync per record
    assert head(keystore_dir)["offset"] == line_offsets(keystore_dir)[-1]
    store.close()


def test_the_environment_and_the_default_reach_the_local_provider(
    keystore: Keystore, keystore_dir: Path, log_fsyncs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keystore.create_key("k")
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SYNC", "always")
    before = len(log_fsyncs)
    kmsenvelope.Engine().encrypt(b"x", ["local:k"], CTX)
    assert log_fsyncs[before:] == ["MainThread"]

    monkeypatch.delenv("KMSENVELOPE_AUDIT_SYNC")
    engine = kmsenvelope.Engine()
    start = time.monotonic()
    before = len(log_fsyncs)
    engine.encrypt(b"x", ["local:k"], CTX)
    if time.monotonic() - start < BATCH_WINDOW_SECONDS:
        assert log_fsyncs[before:] == []  # batch: no fsync while the encrypt runs


# -- nothing acknowledged is lost when a process dies --------------------------------------------

WRAPPER = r"""
import os, sys
from kmsenvelope.local import Keystore
store = Keystore.open(sys.argv[1], os.environ["KMSENVELOPE_KEYSTORE_PASSPHRASE"])
for i in range(int(sys.argv[2])):
    store.wrap("k", None, os.urandom(32), {"i": str(i)})
print("wrapped", flush=True)
sys.stdin.read()  # until killed
"""


def test_a_killed_process_loses_no_acknowledged_record(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    count = 400
    child = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(keystore_dir), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "wrapped\n", child.stderr
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    entries = audit_entries(keystore_dir)
    wraps = [e for e in entries if e["op"] == "wrap" and e["pid"] == child.pid]
    assert [e["context"]["i"] for e in wraps] == [str(i) for i in range(count)]
    verify_cli(2 + count)
    keystore.wrap("k", None, os.urandom(32), CTX)  # chains on after them
    keystore.close()
    verify_cli(3 + count)


# -- a head that lags the log ---------------------------------------------------------------------


@pytest.fixture
def lagging(keystore: Keystore, keystore_dir: Path) -> int:
    """A log that runs 300 wrap records ahead of its head (as a power cut before the group
    commit leaves it): entry 2 (key.create) is the head. Returns the entry count."""
    keystore.create_key("k")
    at_create = (keystore_dir / "audit.head").read_bytes()
    for i in range(300):
        keystore.wrap("k", None, os.urandom(32), {"i": str(i)})
    keystore.close()
    assert head(keystore_dir)["seq"] == 302
    (keystore_dir / "audit.head").write_bytes(at_create)
    assert head(keystore_dir)["seq"] == 2
    return 302


def test_a_head_that_lags_by_many_entries_verifies_and_is_chained_after(
    lagging: int, keystore_dir: Path
) -> None:
    assert head(keystore_dir)["offset"] == line_offsets(keystore_dir)[1]
    verify_cli(lagging)
    store = Keystore.open(keystore_dir, PASSPHRASE)
    assert store.verify_audit().entries == lagging
    store.wrap("k", None, os.urandom(32), CTX)  # reads on from the head's entry to the end
    store.rotate("k")  # a key change moves the head to the end at once
    assert head(keystore_dir)["seq"] == lagging + 2
    assert head(keystore_dir)["offset"] == line_offsets(keystore_dir)[-1]
    entries = audit_entries(keystore_dir)
    assert [e["seq"] for e in entries] == list(range(1, lagging + 3))
    verify_cli(lagging + 2)


def test_an_edited_entry_after_the_head_is_detected(lagging: int, keystore_dir: Path) -> None:
    log = keystore_dir / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[199])
    entry["outcome"] = "error: KeyDisabledError"
    lines[199] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    log.write_bytes(b"".join(lines))
    with pytest.raises(AuditLogError, match=r"audit\.log:200: entry 200 was modified"):
        Keystore.open(keystore_dir, PASSPHRASE).verify_audit()
    assert run_cli("audit", "verify").returncode == 12


@pytest.mark.parametrize("keep", [0, 1, 150, 299])
def test_entries_cut_before_the_head_are_detected(
    keep: int, keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    for i in range(298):
        keystore.wrap("k", None, os.urandom(32), {"i": str(i)})
    keystore.close()  # the head is at the end: entry 300
    assert head(keystore_dir)["seq"] == 300
    log = keystore_dir / "audit.log"
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:keep]))
    with pytest.raises(
        AuditLogError, match=f"log ends at entry {keep} but the head records entry 300"
    ):
        Keystore.open(keystore_dir, PASSPHRASE).verify_audit()


def test_a_head_whose_offset_is_not_its_entry_is_refused(lagging: int, keystore_dir: Path) -> None:
    """A head is bound to its entry's place in the log, under its MAC."""
    key = StoreOracle(keystore_dir, PASSPHRASE).audit_key
    doc = head(keystore_dir)
    stripped = {k: v for k, v in doc.items() if k != "offset"}  # passed off as an older head
    (keystore_dir / "audit.head").write_text(json.dumps(stripped))
    with pytest.raises(AuditLogError, match="MAC mismatch"):
        Keystore.open(keystore_dir, PASSPHRASE).verify_audit()
    wrong = line_offsets(keystore_dir)[2]
    text = f"audit.head/3|{doc['seq']}|{doc['hash']}|{doc['gen']}|{wrong}"
    mac = hmac.new(key, text.encode(), sha256).hexdigest()
    (keystore_dir / "audit.head").write_text(json.dumps({**doc, "offset": wrong, "mac": mac}))
    with pytest.raises(AuditLogError, match=r"audit\.log:2: entry 2 starts at byte"):
        Keystore.open(keystore_dir, PASSPHRASE).verify_audit()


def test_a_head_written_before_heads_kept_the_offset_is_read_and_upgraded(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    for _ in range(50):
        keystore.wrap("k", None, os.urandom(32), CTX)
    keystore.close()
    doc = head(keystore_dir)
    key = StoreOracle(keystore_dir, PASSPHRASE).audit_key
    text = f"audit.head/2|{doc['seq']}|{doc['hash']}|{doc['gen']}"
    older = {k: doc[k] for k in ("seq", "hash", "gen")}
    older["mac"] = hmac.new(key, text.encode(), sha256).hexdigest()
    (keystore_dir / "audit.head").write_text(json.dumps(older))  # as kmsenvelope 0.2 wrote it
    verify_cli(52)
    store = Keystore.open(keystore_dir, PASSPHRASE)
    store.wrap("k", None, os.urandom(32), CTX)
    store.close()
    upgraded = head(keystore_dir)
    assert upgraded["seq"] == 53
    assert upgraded["offset"] == line_offsets(keystore_dir)[-1]
    verify_cli(53)


# -- several writers ------------------------------------------------------------------------------

BATCH_WORKER = r"""
import os, sys, time
from pathlib import Path
from kmsenvelope.local import Keystore
directory, worker, count, go = sys.argv[1:5]
store = Keystore.open(directory, os.environ["KMSENVELOPE_KEYSTORE_PASSPHRASE"])
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(int(count)):
    w = store.wrap("k", None, os.urandom(32), {"w": worker, "i": str(i)})
    if i % 10 == 0:
        store.unwrap("k", w, {"w": worker, "i": str(i)})
"""


def test_two_processes_appending_in_batch_mode_keep_one_chain(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("k")
    go = tmp_path / "go"
    count = 300
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BATCH_WORKER, str(keystore_dir), name, str(count), str(go)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    go.touch()
    for _ in range(50):  # and this process too, meanwhile
        keystore.wrap("k", None, os.urandom(32), {"w": "parent"})
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    keystore.close()

    entries = audit_entries(keystore_dir)
    total = 2 + 50 + 2 * (count + count // 10)
    assert [e["seq"] for e in entries] == list(range(1, total + 1))
    for name, proc in zip(("a", "b"), procs, strict=True):
        mine = [e for e in entries if e.get("context", {}).get("w") == name and e["op"] == "wrap"]
        assert [e["context"]["i"] for e in mine] == [str(i) for i in range(count)]
        assert {e["pid"] for e in mine} == {proc.pid}
    assert head(keystore_dir)["seq"] == total  # each writer's last group commit moved it
    verify_cli(total)


def test_a_forked_child_locks_on_its_own(keystore: Keystore, keystore_dir: Path) -> None:
    """A child made by fork must not share the parent's lock descriptor (one flock would then
    cover both, and their appends would fork the chain)."""
    keystore.create_key("k")
    keystore.wrap("k", None, os.urandom(32), CTX)  # lock, log and sync thread all in use
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            for _ in range(200):
                keystore.wrap("k", None, os.urandom(32), {"who": "child"})
            code = 0
        finally:
            os._exit(code)
    for _ in range(200):
        keystore.wrap("k", None, os.urandom(32), {"who": "parent"})
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    keystore.close()
    entries = audit_entries(keystore_dir)
    assert [e["seq"] for e in entries] == list(range(1, 404))
    verify_cli(403)


# -- what a keystore keeps, checked on every operation ---------------------------------------------


def test_a_key_changed_by_another_process_is_seen_by_the_next_operation(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    first = keystore.wrap("k", None, os.urandom(32), CTX)  # key, material, log: all kept now
    assert run_cli("keys", "disable", "k").returncode == 0
    with pytest.raises(KeyDisabledError):
        keystore.wrap("k", None, os.urandom(32), CTX)
    with pytest.raises(KeyDisabledError):
        keystore.unwrap("k", first, CTX)
    assert run_cli("keys", "enable", "k").returncode == 0
    assert run_cli("keys", "rotate", "k").returncode == 0
    second = keystore.wrap("k", None, os.urandom(32), CTX)
    assert second.key_id == "local:k/2"
    assert run_cli("keys", "destroy", "k", "--version", "1", "--yes").returncode == 0
    with pytest.raises(KeyDestroyedError):
        keystore.unwrap("k", first, CTX)
    assert keystore.get("k").versions[0].state == "destroyed"
    assert len(keystore.unwrap("k", second, CTX)) == 32


def test_a_key_changed_through_another_keystore_object_is_seen(keystore_dir: Path) -> None:
    mine = Keystore.open(keystore_dir, PASSPHRASE)
    other = Keystore.open(keystore_dir, PASSPHRASE)
    mine.create_key("k")
    wrapped = mine.wrap("k", None, os.urandom(32), CTX)
    other.set_enabled("k", False)
    with pytest.raises(KeyDisabledError):
        mine.wrap("k", None, os.urandom(32), CTX)
    other.set_enabled("k", True)
    other.rotate("k")
    assert mine.wrap("k", None, os.urandom(32), CTX).key_id == "local:k/2"
    other.destroy_version("k", 1)
    with pytest.raises(KeyDestroyedError):
        mine.unwrap("k", wrapped, CTX)
    mine.close()
    other.close()
    verify_cli(len(audit_entries(keystore_dir)))


# -- the daemon's peer, and closing ---------------------------------------------------------------


def test_a_peer_is_recorded_with_the_writer_pid(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("k")
    wrapped = keystore.wrap("k", None, os.urandom(32), CTX, peer=(1234, 56789))
    keystore.unwrap("k", wrapped, CTX, peer=(1234, 56789))
    keystore.set_enabled("k", False)
    with pytest.raises(KeyDisabledError):
        keystore.wrap("k", None, os.urandom(32), CTX, peer=(0, 1))
    entries = audit_entries(keystore_dir)
    wrap, unwrap, _, refused = entries[-4:]
    for entry in (wrap, unwrap):
        assert (entry["peer_uid"], entry["peer_pid"], entry["pid"]) == (1234, 56789, os.getpid())
    assert refused["outcome"] == "error: KeyDisabledError"
    assert (refused["peer_uid"], refused["peer_pid"]) == (0, 1)
    assert "peer_uid" not in entries[1]  # an operation of this process names no peer
    oracle = StoreOracle(keystore_dir, PASSPHRASE)
    for entry in entries:
        body = {k: v for k, v in entry.items() if k != "hash"}
        assert oracle.audit_hash(entry["prev"], body) == entry["hash"]
    verify_cli(len(entries))


def test_close_syncs_and_is_idempotent(keystore_dir: Path) -> None:
    with Keystore.open(keystore_dir, PASSPHRASE) as store:
        store.create_key("k")
        for _ in range(10):
            store.wrap("k", None, os.urandom(32), CTX)
        assert head(keystore_dir)["seq"] <= 12
    assert head(keystore_dir)["seq"] == 12  # closing synced them and moved the head
    store.close()
    store.wrap("k", None, os.urandom(32), CTX)  # still usable: it reopens what it needs
    store.close()
    assert head(keystore_dir)["seq"] == 13
