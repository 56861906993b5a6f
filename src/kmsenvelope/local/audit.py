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
from .files import atomic_write

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

    def _read_head(self) -> tuple[int, str]:
        try:
            data = json.loads(self.head_path.read_text())
            return int(data["seq"]), str(data["hash"])
        except FileNotFoundError:
            return 0, GENESIS
        except (ValueError, KeyError, TypeError):
            raise AuditLogError(f"{self.head_path}: audit head is unreadable") from None

    def append(
        self,
        op: str,
        key: str,
        outcome: str = "ok",
        context: Mapping[str, str] | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one entry (call with the keystore's exclusive lock held)."""
        seq, prev = self._read_head()
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
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        atomic_write(self.head_path, _canonical({"seq": seq + 1, "hash": digest}))

    def verify(self) -> AuditReport:
        """Check every entry and the head; raise ``AuditLogError`` saying where it breaks."""
        head_seq, head_hash = self._read_head()
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
                raise AuditLogError(f"{where}: entry is not valid audit JSON (edited?)") from None
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
            prev = stored
            count += 1
        if count != head_seq or not hmac.compare_digest(prev, head_hash):
            raise AuditLogError(
                f"{self.path}: log ends at entry {count} but the head records entry {head_seq}: "
                "entries were removed from the end, or the log was replaced"
            )
        return AuditReport(count, prev)
