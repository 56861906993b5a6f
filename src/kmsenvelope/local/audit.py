"""The keystore's append-only audit log, hash-chained so edits and deletions are detected.

Each line is a JSON object. Its ``hash`` is HMAC-SHA256 (keyed from the keystore passphrase)
over the previous entry's hash and the entry's canonical JSON without ``hash``. A separate
``audit.head`` file records the last sequence number and hash, so removing entries from the
end is detected too. Entries hold key ids, operations, outcomes and the encryption context,
never key material.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from ..errors import AuditLogError
from .files import atomic_write, drop_torn_tail

__all__ = ["AuditLog", "AuditReport"]

GENESIS = "0" * 64


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Result of a successful verification."""

    entries: int
    head: str


class AuditLog:
    """Appends to and verifies ``audit.log``; callers hold the keystore lock while appending."""

    def __init__(self, directory: Path, key: bytes) -> None:
        self.path = directory / "audit.log"
        self.head_path = directory / "audit.head"
        self._key = key

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def _hash(self, prev: str, body: Mapping[str, Any]) -> str:
        return hmac.new(self._key, prev.encode() + b"\n" + _canonical(body), sha256).hexdigest()

    def _head_mac(self, seq: int, digest: str) -> str:
        return hmac.new(self._key, f"audit.head|{seq}|{digest}".encode(), sha256).hexdigest()

    def _read_head(self) -> tuple[int, str] | None:
        """The authenticated (seq, hash) of the last entry, or None if there is no head file."""
        try:
            data = json.loads(self.head_path.read_text())
            seq, digest, mac = int(data["seq"]), str(data["hash"]), str(data["mac"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            raise AuditLogError(f"{self.head_path}: audit head is unreadable (edited?)") from None
        if not hmac.compare_digest(mac, self._head_mac(seq, digest)):
            raise AuditLogError(f"{self.head_path}: audit head was modified (MAC mismatch)")
        return seq, digest

    def _write_head(self, seq: int, digest: str) -> None:
        doc = {"seq": seq, "hash": digest, "mac": self._head_mac(seq, digest)}
        atomic_write(self.head_path, _canonical(doc))

    def _last_entry(self) -> dict[str, Any] | None:
        """The last complete line of the log (reads only the file's tail)."""
        try:
            with self.path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - 65536))
                tail = fh.read()
        except FileNotFoundError:
            return None
        lines = [line for line in tail.split(b"\n") if line.strip()]
        if not lines:
            return None
        try:
            entry = json.loads(lines[-1])
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    def _valid_successor(self, entry: Mapping[str, Any] | None, seq: int, prev: str) -> bool:
        """Is ``entry`` a correctly chained entry ``seq + 1`` after ``prev``?"""
        if entry is None or entry.get("seq") != seq + 1 or entry.get("prev") != prev:
            return False
        body = {k: v for k, v in entry.items() if k != "hash"}
        stored = entry.get("hash")
        return isinstance(stored, str) and hmac.compare_digest(stored, self._hash(prev, body))

    def _current_end(self) -> tuple[int, str]:
        """Where the next entry chains from, repairing a head left behind by a crash."""
        head = self._read_head()
        last = self._last_entry()
        if head is None:
            if last is not None:
                raise AuditLogError(
                    f"{self.head_path} is missing but {self.path} has entries: "
                    "the audit trail was tampered with (run 'kmsenvelope audit verify')"
                )
            return 0, GENESIS
        seq, prev = head
        if self._valid_successor(last, seq, prev):
            assert last is not None  # a crash between the log line and the head: adopt it
            seq, prev = int(last["seq"]), str(last["hash"])
            self._write_head(seq, prev)
        return seq, prev

    def append(
        self,
        op: str,
        key: str,
        outcome: str = "ok",
        context: Mapping[str, str] | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one entry (call with the keystore's exclusive lock held)."""
        seq, prev = self._current_end()
        body: dict[str, Any] = {
            "seq": seq + 1,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "op": op,
            "key": key,
            "outcome": outcome,
            "pid": os.getpid(),
            "prev": prev,
        }
        if context:
            body["context"] = dict(context)
        if detail:
            body["detail"] = dict(detail)
        digest = self._hash(prev, body)
        line = _canonical({**body, "hash": digest}) + b"\n"
        drop_torn_tail(self.path)  # a crash mid-append left half a line: never an entry
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._write_head(seq + 1, digest)

    def verify(self) -> AuditReport:
        """Check every entry and the head; raise ``AuditLogError`` saying where it breaks."""
        head = self._read_head()
        if head is None:
            raise AuditLogError(
                f"{self.head_path} is missing: the audit trail was deleted or replaced"
            )
        head_seq, head_hash = head
        prev = GENESIS
        count = 0
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = b""
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for lineno, line in enumerate(lines, 1):
            where = f"{self.path}:{lineno}"
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError
                stored = entry.pop("hash")
                seq = entry["seq"]
            except (ValueError, KeyError, TypeError):
                torn = lineno == len(lines) and not raw.endswith(b"\n")
                why = (
                    "incomplete last entry (a process died while writing it?; the next "
                    "keystore operation removes it)"
                    if torn
                    else "entry is not valid audit JSON (edited?)"
                )
                raise AuditLogError(f"{where}: {why}") from None
            if seq != count + 1:
                raise AuditLogError(
                    f"{where}: expected entry {count + 1} but found {seq}: "
                    "entries were removed, duplicated or reordered"
                )
            if entry.get("prev") != prev:
                raise AuditLogError(
                    f"{where}: entry {seq} does not chain to entry {count} "
                    "(an earlier entry was removed or edited)"
                )
            if not isinstance(stored, str) or not hmac.compare_digest(
                stored, self._hash(prev, entry)
            ):
                raise AuditLogError(f"{where}: entry {seq} was modified (hash does not match)")
            if count == head_seq and not hmac.compare_digest(prev, head_hash):
                raise AuditLogError(f"{where}: the log does not pass through the recorded head")
            prev = stored
            count += 1
        # The head may lag the log by one entry if a process died between the two writes.
        if count not in (head_seq, head_seq + 1) or (
            count == head_seq and not hmac.compare_digest(prev, head_hash)
        ):
            raise AuditLogError(
                f"{self.path}: log ends at entry {count} but the head records entry {head_seq}: "
                "entries were removed from the end, or the log was replaced"
            )
        return AuditReport(count, prev)
