"""The keystore's append-only audit log, hash-chained so edits and deletions are detected.

Each line is a JSON object. Its ``hash`` is HMAC-SHA256 (keyed from the keystore passphrase)
over the previous entry's hash and the entry's canonical JSON without ``hash``. A separate
``audit.head`` file records the last sequence number and hash, so removing entries from the
end is detected too. Entries hold key ids, operations, outcomes and the encryption context,
never key material.

Key changes record the keystore generation they produced (``gen``); generations strictly
increase along the chain, and the head records (under its MAC) the highest one, so the keystore
can refuse a keystore.json older than its log (:meth:`AuditLog.generation`) without reading the
whole log. Heads written before generations were kept there (no ``gen``) are still accepted.

Every entry is bounded (about 2 KiB at most), whatever an envelope names: a context whose JSON
exceeds ``MAX_CONTEXT_BYTES`` is recorded as its SHA-256 digest and size, a key id longer than
``MAX_KEY_CHARS`` is truncated (with the digest of the whole), so one envelope, whose unwrap
attempts the engine caps, adds a bounded amount to the log.

An *anchor* (``SEQ:HASH``, from :meth:`AuditLog.anchor`) names one entry; kept outside the
keystore, it later proves the log was not rolled back past that entry (:meth:`AuditLog.verify`).
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from ..errors import AuditLogError, ConfigError
from ..format.header import encode_context
from ..safe_files import atomic_write, drop_torn_tail, open_regular, read_regular
from .encoding import now
from .files import KEYSTORE_FILES

__all__ = ["MAX_CONTEXT_BYTES", "MAX_KEY_CHARS", "AuditLog", "AuditReport", "parse_anchor"]

GENESIS = "0" * 64
MAX_CONTEXT_BYTES = 1024
"""A context whose canonical JSON is longer is recorded as ``context_digest`` instead."""
MAX_KEY_CHARS = 256
"""A longer key id is cut to this many characters, with ``key_digest`` of the whole."""
_MAX_DETAIL_BYTES = 1024
_ANCHOR = re.compile(r"^([1-9][0-9]{0,17}):([0-9a-f]{64})$")


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(data: bytes) -> dict[str, Any]:
    return {"sha256": sha256(data).hexdigest(), "size": len(data)}


def bounded_fields(
    key: str, context: Mapping[str, str] | None, detail: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The ``key``/``context``/``detail`` fields of an entry, each cut to a fixed size.

    A large context is replaced by the SHA-256 of its canonical encoding (docs/format.md 5.4)
    and its size, so it can still be matched against an envelope.
    """
    out: dict[str, Any] = {"key": key}
    if len(key) > MAX_KEY_CHARS:
        out["key"] = key[:MAX_KEY_CHARS] + "..."
        out["key_digest"] = _digest(key.encode("utf-8", "surrogatepass"))
    if context:
        plain = dict(context)
        if len(_canonical(plain)) > MAX_CONTEXT_BYTES:
            summary = _digest(encode_context(plain))
            out["context_digest"] = {**summary, "entries": len(plain)}
        else:
            out["context"] = plain
    if detail:
        items = dict(detail)
        if len(_canonical(items)) > _MAX_DETAIL_BYTES:
            out["detail_digest"] = _digest(_canonical(items))
        else:
            out["detail"] = items
    return out


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as printed by ``kmsenvelope audit anchor``) -> (SEQ, HASH)."""
    match = _ANCHOR.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            "an audit anchor is SEQ:HASH as printed by 'kmsenvelope audit anchor' "
            "(a number, a colon and 64 hex digits)"
        )
    return int(match.group(1)), match.group(2)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Result of a successful verification."""

    entries: int
    head: str
    generation: int = 0
    """The highest keystore generation the log records (0 for a log without any)."""

    @property
    def anchor(self) -> str:
        """This log's end as an anchor (``SEQ:HASH``)."""
        return f"{self.entries}:{self.head}"


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

    def _head_mac(self, seq: int, digest: str, generation: int | None) -> str:
        # A head without a generation (written before heads kept one) has its own MAC input,
        # so a current head cannot be passed off as one by dropping its generation.
        text = (
            f"audit.head|{seq}|{digest}"
            if generation is None
            else f"audit.head/2|{seq}|{digest}|{generation}"
        )
        return hmac.new(self._key, text.encode(), sha256).hexdigest()

    def _read_head(self) -> tuple[int, str, int | None] | None:
        """The authenticated (seq, hash, generation or None) of the last entry, or None if
        there is no head file."""
        try:
            data = json.loads(read_regular(self.head_path, refuse=KEYSTORE_FILES))
            seq, digest, mac = int(data["seq"]), str(data["hash"]), str(data["mac"])
            gen = data.get("gen")
            if gen is not None and (not isinstance(gen, int) or isinstance(gen, bool)):
                raise ValueError
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AuditLogError(f"{self.head_path}: audit head is unreadable (edited?)") from None
        if not hmac.compare_digest(mac, self._head_mac(seq, digest, gen)):
            raise AuditLogError(f"{self.head_path}: audit head was modified (MAC mismatch)")
        return seq, digest, gen

    def _write_head(self, seq: int, digest: str, generation: int) -> None:
        doc = {
            "seq": seq,
            "hash": digest,
            "gen": generation,
            "mac": self._head_mac(seq, digest, generation),
        }
        atomic_write(self.head_path, _canonical(doc), refuse=KEYSTORE_FILES)

    def _scan_generation(self) -> int:
        """The highest generation any entry records, read from the whole log: only for a head
        written before heads kept it (the next append records it in the head)."""
        try:
            raw = read_regular(self.path, refuse=KEYSTORE_FILES)
        except FileNotFoundError:
            return 0
        highest = 0
        for line in raw.split(b"\n"):
            if b'"gen":' not in line:
                continue
            try:
                gen = json.loads(line).get("gen")
            except (ValueError, AttributeError):
                continue
            if isinstance(gen, int) and not isinstance(gen, bool):
                highest = max(highest, gen)
        return highest

    def _last_entry(self) -> dict[str, Any] | None:
        """The last complete line of the log (reads only the file's tail)."""
        try:
            with os.fdopen(open_regular(self.path, os.O_RDONLY, refuse=KEYSTORE_FILES), "rb") as fh:
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

    def _end(self) -> tuple[int, str, int, bool]:
        """(seq, hash, generation) of the log's end, and whether that is an entry beyond the
        head (a crash between the log line and the head) that the head should adopt."""
        head = self._read_head()
        last = self._last_entry()
        if head is None:
            if last is not None:
                raise AuditLogError(
                    f"{self.head_path} is missing but {self.path} has entries: "
                    "the audit trail was tampered with (run 'kmsenvelope audit verify')"
                )
            return 0, GENESIS, 0, False
        seq, prev, generation = head
        if generation is None:
            generation = self._scan_generation()
        if self._valid_successor(last, seq, prev):
            assert last is not None
            gen = last.get("gen")
            if isinstance(gen, int) and not isinstance(gen, bool):
                generation = max(generation, gen)
            return int(last["seq"]), str(last["hash"]), generation, True
        return seq, prev, generation, False

    def _current_end(self) -> tuple[int, str, int]:
        """Where the next entry chains from, repairing a head left behind by a crash."""
        seq, prev, generation, adopt = self._end()
        if adopt:
            self._write_head(seq, prev, generation)
        return seq, prev, generation

    def generation(self) -> int:
        """The highest keystore generation the log records (0 if none): from the MAC'd head,
        or an entry a crash left just beyond it. Reads the head and the log's tail only."""
        return self._end()[2]

    def append(
        self,
        op: str,
        key: str,
        outcome: str = "ok",
        context: Mapping[str, str] | None = None,
        detail: Mapping[str, Any] | None = None,
        *,
        generation: int | None = None,
    ) -> None:
        """Append one entry (call with the keystore's exclusive lock held).

        ``generation``: the keystore generation a key change produced, recorded in the entry
        and (the highest so far) in the head, so that a keystore.json rolled back behind the
        log is refused.
        """
        seq, prev, highest = self._current_end()
        body: dict[str, Any] = {
            "seq": seq + 1,
            "time": now(),
            "op": op,
            "outcome": outcome[:200],
            "pid": os.getpid(),
            "prev": prev,
            **bounded_fields(key, context, detail),
        }
        if generation is not None:
            body["gen"] = generation
            highest = max(highest, generation)
        digest = self._hash(prev, body)
        line = _canonical({**body, "hash": digest}) + b"\n"
        # a crash mid-append left half a line: never an entry
        drop_torn_tail(self.path, refuse=KEYSTORE_FILES)
        fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, refuse=KEYSTORE_FILES)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._write_head(seq + 1, digest, highest)

    def anchor(self) -> str:
        """Verify the log and return its end as an anchor (``SEQ:HASH``) to keep elsewhere."""
        return self.verify().anchor

    def verify(self, anchor: str | None = None) -> AuditReport:
        """Check every entry and the head; raise ``AuditLogError`` saying where it breaks.

        Keystore generations must strictly increase along the chain (a generation recorded
        again means the keystore was rolled back and changed again), and the head's generation
        must be the log's. With ``anchor`` (from :meth:`anchor`), also prove the anchored entry
        is still in the chain: a log rolled back to an older copy (with its head) passes the
        chain checks but not this one.
        """
        anchored = None if anchor is None else parse_anchor(anchor)
        head = self._read_head()
        if head is None:
            raise AuditLogError(
                f"{self.head_path} is missing: the audit trail was deleted or replaced"
            )
        head_seq, head_hash, head_gen = head
        prev = GENESIS
        count = 0
        generation = 0
        try:
            raw = read_regular(self.path, refuse=KEYSTORE_FILES)
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
            if count == head_seq:
                self._check_head_generation(head_gen, generation)
            if (
                anchored is not None
                and seq == anchored[0]
                and not hmac.compare_digest(stored, anchored[1])
            ):
                raise AuditLogError(
                    f"{where}: entry {seq} is not the anchored entry: the audit log was "
                    "rolled back past the anchor and written again (or the anchor is from "
                    "another keystore)"
                )
            gen = entry.get("gen")
            if gen is not None:
                if not isinstance(gen, int) or isinstance(gen, bool) or gen <= generation:
                    raise AuditLogError(
                        f"{where}: entry {seq} records keystore generation {gen} after "
                        f"generation {generation}: generations must increase (the keystore was "
                        "rolled back to an older copy and changed again)"
                    )
                generation = gen
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
        if count == head_seq:
            self._check_head_generation(head_gen, generation)
        if anchored is not None and count < anchored[0]:
            raise AuditLogError(
                f"{self.path}: the log ends at entry {count} but the anchor names entry "
                f"{anchored[0]}: the audit log was rolled back (or the anchor is from another "
                "keystore)"
            )
        return AuditReport(count, prev, generation)

    def _check_head_generation(self, recorded: int | None, logged: int) -> None:
        """The head's generation (if it has one) must be the highest the log records up to
        the head."""
        if recorded is not None and recorded != logged:
            raise AuditLogError(
                f"{self.head_path}: the head records keystore generation {recorded} but the "
                f"log up to it records {logged} (edited?)"
            )
