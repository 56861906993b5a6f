"""The keystore's hash-chained audit log: what it records, and that tampering is located."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from local_support import PASSPHRASE, StoreOracle, assert_cli_error, audit_entries, ops, run_cli

import kmsenvelope
from kmsenvelope import NoRecipientError, WrappedKey
from kmsenvelope.errors import (
    AuditLogError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    UnwrapError,
)
from kmsenvelope.local import Keystore
from kmsenvelope.local.provider import LocalKEK, factory

CTX = {"service": "billing", "env": "test"}
GENESIS = "0" * 64


def kek(keystore_dir: Path, uri: str) -> LocalKEK:
    return factory(uri, {"keystore": str(keystore_dir)})


def test_every_operation_is_audited_in_order(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    a = kek(keystore_dir, "local:a")
    dek = os.urandom(32)
    keystore.create_key("a")
    w1 = a.wrap(dek, CTX)
    assert a.unwrap(w1, CTX) == dek
    keystore.rotate("a")
    keystore.set_enabled("a", False)
    with pytest.raises(KeyDisabledError):
        a.wrap(dek, CTX)
    with pytest.raises(KeyDisabledError):
        a.unwrap(w1, CTX)
    keystore.set_enabled("a", True)
    keystore.destroy_version("a", 1)
    with pytest.raises(KeyDestroyedError):
        a.unwrap(w1, CTX)
    w2 = a.wrap(dek, CTX)
    flipped = w2.ciphertext[:-1] + bytes([w2.ciphertext[-1] ^ 1])
    tampered = dataclasses.replace(w2, ciphertext=flipped)
    with pytest.raises(UnwrapError):
        a.unwrap(tampered, CTX)
    with pytest.raises(UnwrapError):
        a.unwrap(w2, {"service": "payroll"})
    with pytest.raises(KeyNotFoundError):
        a.unwrap(WrappedKey("local", "local:a/9", w2.algorithm, w2.ciphertext), CTX)
    blob = kmsenvelope.encrypt(b"audited", ["local:a"], CTX)
    assert kmsenvelope.decrypt(blob, CTX) == b"audited"
    keystore.rotate("a")
    keystore.destroy_version("a", 2)
    with pytest.raises(NoRecipientError):
        kmsenvelope.Engine().decrypt(blob, CTX)
    backup = tmp_path / "audit.backup"
    keystore.backup(backup, "backup pass")
    keystore.restore(backup, "backup pass")
    assert run_cli("keys", "create", "b").returncode == 0
    assert run_cli("keys", "rotate", "b").returncode == 0

    entries = audit_entries(keystore_dir)
    assert ops(entries) == [
        ("keystore.create", "local:*", "ok"),
        ("key.create", "local:a/1", "ok"),
        ("wrap", "local:a/1", "ok"),
        ("unwrap", "local:a/1", "ok"),
        ("key.rotate", "local:a/2", "ok"),
        ("key.disable", "local:a", "ok"),
        ("wrap", "local:a/2", "error: KeyDisabledError"),
        ("unwrap", "local:a/1", "error: KeyDisabledError"),
        ("key.enable", "local:a", "ok"),
        ("key.destroy", "local:a/1", "ok"),
        ("unwrap", "local:a/1", "error: KeyDestroyedError"),
        ("wrap", "local:a/2", "ok"),
        ("unwrap", "local:a/2", "error: UnwrapError"),
        ("unwrap", "local:a/2", "error: UnwrapError"),
        ("unwrap", "local:a/9", "error: KeyNotFoundError"),
        ("wrap", "local:a/2", "ok"),
        ("unwrap", "local:a/2", "ok"),
        ("key.rotate", "local:a/3", "ok"),
        ("key.destroy", "local:a/2", "ok"),
        ("unwrap", "local:a/2", "error: KeyDestroyedError"),
        ("keystore.backup", "local:*", "ok"),
        ("keystore.restore", "local:*", "ok"),
        ("key.create", "local:b/1", "ok"),
        ("key.rotate", "local:b/2", "ok"),
    ]
    # the encryption context is recorded with each wrap and unwrap (the wrong one too)
    contexts = [e.get("context") for e in entries if e["op"] in ("wrap", "unwrap")]
    assert contexts == [CTX] * 7 + [{"service": "payroll"}] + [CTX] * 4
    assert entries[1]["detail"] == {"type": "aes256"}
    assert entries[20]["detail"] == {"keys": 1}
    assert entries[21]["detail"] == {"keys": ["a"]}
    # the chain: numbered, each entry linked to the previous, the head at the end
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert [e["prev"] for e in entries] == [GENESIS] + [e["hash"] for e in entries[:-1]]
    head = json.loads((keystore_dir / "audit.head").read_text())
    assert head["seq"] == len(entries)
    assert head["hash"] == entries[-1]["hash"]
    assert set(head) == {"seq", "hash", "gen", "offset", "mac"}  # the head is authenticated too
    assert head["gen"] == max(e.get("gen", 0) for e in entries)  # the keystore generation
    # each hash is an HMAC under the passphrase-derived audit key (checked independently)
    oracle = StoreOracle(keystore_dir, PASSPHRASE)
    for e in entries:
        body = {k: v for k, v in e.items() if k != "hash"}
        assert oracle.audit_hash(e["prev"], body) == e["hash"]
    assert {e["pid"] for e in entries[:22]} == {os.getpid()}
    assert len({e["pid"] for e in entries[22:]}) == 2  # two CLI processes
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["time"]) for e in entries)

    report = keystore.audit.verify()
    assert report.entries == len(entries)
    assert report.head == entries[-1]["hash"]
    proc = run_cli("audit", "verify")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(entries)} entries" in proc.stdout


def test_empty_new_keystore_verifies(keystore: Keystore) -> None:
    assert keystore.audit.verify().entries == 1  # keystore.create


# -- tampering ------------------------------------------------------------------------------------


@pytest.fixture
def log(keystore: Keystore, keystore_dir: Path) -> Path:
    """A keystore whose audit log holds 9 entries; returns the log's path."""
    a = kek(keystore_dir, "local:a")
    keystore.create_key("a")  # 2
    w = a.wrap(os.urandom(32), CTX)  # 3
    a.unwrap(w, CTX)  # 4
    keystore.rotate("a")  # 5
    a.wrap(os.urandom(32), CTX)  # 6
    with pytest.raises(UnwrapError):  # 7 (error)
        a.unwrap(w, {"other": "context"})
    keystore.set_enabled("a", False)  # 8
    keystore.set_enabled("a", True)  # 9
    assert keystore.audit.verify().entries == 9
    return keystore_dir / "audit.log"


Tamper = Callable[[list[bytes]], list[bytes]]


def _edit(lineno: int, field: str, value: object) -> Tamper:
    def tamper(lines: list[bytes]) -> list[bytes]:
        entry = json.loads(lines[lineno - 1])
        assert field in entry
        entry[field] = value
        lines[lineno - 1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        return lines

    return tamper


def _delete(lineno: int) -> Tamper:
    return lambda lines: lines[: lineno - 1] + lines[lineno:]


def _swap(i: int, j: int) -> Tamper:
    def tamper(lines: list[bytes]) -> list[bytes]:
        lines[i - 1], lines[j - 1] = lines[j - 1], lines[i - 1]
        return lines

    return tamper


def _forge_append(copy_hash: bool) -> Tamper:
    def tamper(lines: list[bytes]) -> list[bytes]:
        last = json.loads(lines[-1])
        forged = {
            **last,
            "seq": last["seq"] + 1,
            "prev": last["hash"],
            "op": "key.enable",
            "key": "local:a",
            "outcome": "ok",
            "hash": last["hash"] if copy_hash else os.urandom(32).hex(),
        }
        return [*lines, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode()]

    return tamper


def _renumber_after_delete(lineno: int) -> Tamper:
    """Delete an entry and renumber the rest (no key: the hashes cannot be redone)."""

    def tamper(lines: list[bytes]) -> list[bytes]:
        kept = lines[: lineno - 1]
        for line in lines[lineno:]:
            entry = json.loads(line)
            entry["seq"] -= 1
            kept.append(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode())
        return kept

    return tamper


def _line_of_byte(raw: bytes, offset: int) -> int:
    return raw[:offset].count(b"\n") + 1


# name -> (line tamper, line the error must name)
LINE_TAMPERING: dict[str, tuple[Tamper, int]] = {
    "edit-op": (_edit(3, "op", "unwrap"), 3),
    "edit-key": (_edit(5, "key", "local:a/7"), 5),
    "edit-outcome": (_edit(7, "outcome", "ok"), 7),
    "edit-context": (_edit(3, "context", {"service": "billing", "env": "prod"}), 3),
    "edit-time": (_edit(2, "time", "2000-01-01T00:00:00Z"), 2),
    "edit-pid": (_edit(4, "pid", 1), 4),
    "edit-hash": (_edit(4, "hash", "f" * 64), 4),
    "edit-prev": (_edit(6, "prev", GENESIS), 6),
    "edit-seq": (_edit(6, "seq", 60), 6),
    "delete-first": (_delete(1), 1),
    "delete-middle": (_delete(5), 5),
    "delete-middle-and-renumber": (_renumber_after_delete(5), 5),
    "reorder": (_swap(4, 5), 4),
    "reorder-last-two": (_swap(8, 9), 8),
    "duplicate-in-place": (lambda ls: [*ls[:3], ls[2], *ls[3:]], 4),
    "replay-at-end": (lambda ls: [*ls, ls[2]], 10),
    "forge-append": (_forge_append(copy_hash=False), 10),
    "forge-append-copied-hash": (_forge_append(copy_hash=True), 10),
    "blank-line": (lambda ls: [*ls[:2], b"", *ls[2:]], 3),
    "garbage-line": (lambda ls: [*ls[:5], b"this is not json", *ls[6:]], 6),
    "json-array-line": (lambda ls: [*ls[:1], b"[1, 2]", *ls[2:]], 2),
    "hash-missing": (lambda ls: [*ls[:6], ls[6].replace(b'"hash":', b'"hush":'), *ls[7:]], 7),
}


@pytest.mark.parametrize("case", list(LINE_TAMPERING), ids=list(LINE_TAMPERING))
def test_tampered_line_is_located(case: str, log: Path, keystore: Keystore) -> None:
    tamper, lineno = LINE_TAMPERING[case]
    lines = log.read_bytes().split(b"\n")[:-1]
    log.write_bytes(b"\n".join(tamper(lines)) + b"\n")
    with pytest.raises(AuditLogError) as info:
        keystore.audit.verify()
    assert f"{log}:{lineno}:" in str(info.value)


@pytest.mark.parametrize("fraction", [0.97, 0.5, 0.13])
def test_truncated_log_is_located(fraction: float, log: Path, keystore: Keystore) -> None:
    raw = log.read_bytes()
    cut = int(len(raw) * fraction)
    while b"\n" in (raw[cut - 1 : cut], raw[cut : cut + 1]):
        cut -= 1  # cut inside a line, so the last line left is not complete JSON
    log.write_bytes(raw[:cut])
    with pytest.raises(AuditLogError) as info:
        keystore.audit.verify()
    assert f"{log}:{_line_of_byte(raw, cut)}:" in str(info.value)


# name -> (file tamper, entry count the log ends at)
TAIL_TAMPERING: dict[str, tuple[Callable[[bytes], bytes], int]] = {
    "delete-last": (lambda raw: b"".join(raw.splitlines(keepends=True)[:-1]), 8),
    "delete-last-three": (lambda raw: b"".join(raw.splitlines(keepends=True)[:-3]), 6),
    "truncate-at-line-boundary": (lambda raw: b"".join(raw.splitlines(keepends=True)[:4]), 4),
    "emptied": (lambda raw: b"", 0),
}


@pytest.mark.parametrize("case", list(TAIL_TAMPERING), ids=list(TAIL_TAMPERING))
def test_entries_removed_from_the_end_are_detected_by_the_head(
    case: str, log: Path, keystore: Keystore
) -> None:
    tamper, ends_at = TAIL_TAMPERING[case]
    log.write_bytes(tamper(log.read_bytes()))
    with pytest.raises(AuditLogError) as info:
        keystore.audit.verify()
    message = str(info.value)
    assert str(log) in message
    assert f"ends at entry {ends_at} " in message
    assert "head records entry 9" in message


def test_deleted_log_is_detected(log: Path, keystore: Keystore) -> None:
    log.unlink()
    with pytest.raises(AuditLogError) as info:
        keystore.audit.verify()
    assert "head records entry 9" in str(info.value)


@pytest.mark.parametrize("head", [b"", b"{", b'{"seq": "x"}', b'{"seq": 9}', b"[]"])
def test_unreadable_head_is_detected(head: bytes, log: Path, keystore: Keystore) -> None:
    (log.parent / "audit.head").write_bytes(head)
    with pytest.raises(AuditLogError) as info:
        keystore.audit.verify()
    assert "audit.head" in str(info.value)


def test_edited_or_missing_head_is_detected(log: Path, keystore: Keystore) -> None:
    head_path = log.parent / "audit.head"
    head = json.loads(head_path.read_text())
    head_path.write_text(json.dumps({"seq": head["seq"] + 1, "hash": head["hash"]}))
    with pytest.raises(AuditLogError):
        keystore.audit.verify()
    head_path.write_text(json.dumps({"seq": head["seq"], "hash": "0" * 64}))
    with pytest.raises(AuditLogError):
        keystore.audit.verify()
    head_path.unlink()
    with pytest.raises(AuditLogError) as info:
        keystore.audit.verify()
    assert "audit.head is missing" in str(info.value)


def test_truncation_with_a_rewritten_head_is_detected(log: Path, keystore: Keystore) -> None:
    lines = log.read_bytes().splitlines(keepends=True)[:-2]
    log.write_bytes(b"".join(lines))
    last = json.loads(lines[-1])
    (log.parent / "audit.head").write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}))
    with pytest.raises(AuditLogError):
        keystore.audit.verify()


def test_deleting_log_and_head_is_detected(log: Path, keystore: Keystore) -> None:
    log.unlink()
    (log.parent / "audit.head").unlink()
    with pytest.raises(AuditLogError):
        keystore.audit.verify()


# -- the command line ---------------------------------------------------------------------------

CLI_CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "edit-op": (lambda raw: raw.replace(b'"op":"wrap"', b'"op":"unwrap"', 1), "audit.log:3:"),
    "delete-middle": (
        lambda raw: b"".join(
            line for i, line in enumerate(raw.splitlines(keepends=True), 1) if i != 5
        ),
        "audit.log:5:",
    ),
    "truncate-mid-line": (lambda raw: raw[:-20], "audit.log:9:"),
    "delete-last": (
        lambda raw: b"".join(raw.splitlines(keepends=True)[:-1]),
        "head records entry 9",
    ),
}


def test_cli_verify_ok(log: Path) -> None:
    proc = run_cli("audit", "verify")
    assert proc.returncode == 0, proc.stderr
    assert "9 entries" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("case", list(CLI_CASES), ids=list(CLI_CASES))
def test_cli_verify_exits_12_naming_the_line(case: str, log: Path) -> None:
    tamper, needle = CLI_CASES[case]
    raw = log.read_bytes()
    changed = tamper(raw)
    assert changed != raw
    log.write_bytes(changed)
    proc = run_cli("audit", "verify")
    assert_cli_error(proc, 12, needle, str(log))
    assert proc.stdout == ""


def test_crash_between_log_line_and_head_is_repaired(log: Path, keystore: Keystore) -> None:
    """A process that died after writing its entry but before the head leaves a valid trail."""
    head_path = log.parent / "audit.head"
    before = head_path.read_bytes()
    keystore.create_key("after-crash")
    head_path.write_bytes(before)  # as if the head update never happened
    report = keystore.audit.verify()  # one valid entry beyond the head is accepted
    keystore.rotate("after-crash")  # the next append adopts that entry and chains after it
    assert keystore.audit.verify().entries == report.entries + 1
    lines = log.read_bytes().splitlines()
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == list(range(1, len(lines) + 1))


def test_missing_head_with_entries_blocks_further_use(log: Path, keystore: Keystore) -> None:
    (log.parent / "audit.head").unlink()
    with pytest.raises(AuditLogError, match=r"audit\.head is missing"):
        keystore.create_key("blocked")


def test_torn_last_line_from_a_crash_is_repaired_by_the_next_append(
    log: Path, keystore: Keystore
) -> None:
    before = keystore.audit.verify().entries
    with log.open("ab") as fh:
        fh.write(b'{"seq": 99, "op": "wr')  # a process died mid-append
    with pytest.raises(AuditLogError, match="incomplete last entry"):
        keystore.audit.verify()
    keystore.create_key("after-torn-write")
    assert keystore.audit.verify().entries == before + 1
