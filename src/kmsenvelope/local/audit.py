"""The keystore's append-only audit log, hash-chained so edits and deletions are detected.

Each line is a JSON object. Its ``hash`` is HMAC-SHA256 (keyed from the keystore passphrase)
over the previous entry's hash and the entry's canonical JSON without ``hash``. A separate
``audit.head`` file records, under its own MAC, one entry of the chain: its sequence number,
hash and byte offset in the log, and the highest keystore generation up to it. Removing or
changing anything up to the head is detected; entries after it must chain on from it. Entries
hold key ids, operations, outcomes and the encryption context (and, for a request served to
another process, that process's ``peer_uid`` and ``peer_pid``), never key material.

When records reach the disk is the ``audit_sync`` setting (``durability.py``). Key changes,
backup, restore and keystore creation are always fsynced and recorded in the head before they
return. Wrap and unwrap records: with ``always`` the same; with ``batch`` (the default) each
is written before the operation returns and one fsync covers them in groups, after which the
head moves to the log's end, so the log may run ahead of the head by the records of the last
window; a power cut can lose those (a killed process loses nothing: the kernel has them).

Key changes record the keystore generation they produced (``gen``); generations strictly
increase along the chain, and the head records the highest one, so the keystore can refuse a
keystore.json older than its log (:meth:`AuditLog.generation`) without reading the whole log.
Heads written before they kept the offset (``audit.head/2``) or the generation are accepted.

A process appends through a descriptor kept open and remembers where the chain ends (sequence
number, hash, and the log's inode and size): when no other process appended, an append costs
an ``lstat`` and a ``write``; otherwise it reads what was appended since (or from the head's
offset) and chains on, removing a last line torn by a process that died mid-write.

Every entry is bounded (about 2 KiB at most), whatever an envelope names: a context whose JSON
exceeds ``MAX_CONTEXT_BYTES`` is recorded as its SHA-256 digest and size, a key id longer than
``MAX_KEY_CHARS`` is truncated (with the digest of the whole), so one envelope, whose unwrap
attempts the engine caps, adds a bounded amount to the log.

An *anchor* (``SEQ:HASH``, from :meth:`AuditLog.anchor`) names one entry; kept outside the
keystore, it later proves the log was not rolled back past that entry (:meth:`AuditLog.verify`).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import stat
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from ..durability import DEFAULT_SYNC, GroupCommit, SyncMode, parse_sync_mode
from ..errors import AuditLogError, ConfigError
from ..format.header import encode_context
from ..safe_files import (
    FileLock,
    atomic_write,
    finish_replace,
    fsync_dir,
    open_regular,
    prepare_replace,
    read_regular,
)
from .files import KEYSTORE_FILES, keystore_lock

__all__ = [
    "MAX_CONTEXT_BYTES",
    "MAX_KEY_CHARS",
    "WRAP_OPS",
    "AuditLog",
    "AuditReport",
    "parse_anchor",
]

GENESIS = "0" * 64
MAX_CONTEXT_BYTES = 1024
"""A context whose canonical JSON is longer is recorded as ``context_digest`` instead."""
MAX_KEY_CHARS = 256
"""A longer key id is cut to this many characters, with ``key_digest`` of the whole."""
WRAP_OPS = frozenset({"wrap", "unwrap"})
"""Operations whose records follow ``audit_sync``; every other record is always fsynced."""
_MAX_DETAIL_BYTES = 1024
_ANCHOR = re.compile(r"^([1-9][0-9]{0,17}):([0-9a-f]{64})$")
_READ_CHUNK = 1 << 20
_LEGACY_TAIL = 65536


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_quote = encode_basestring  # how _ENCODER writes a string
_clock: tuple[int, str] = (0, "")


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(entry).encode()


def _now() -> str:
    """The current UTC time to the second, as ``encoding.now`` (formatted once a second)."""
    global _clock
    second = int(time.time())
    if _clock[0] != second:
        _clock = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _clock[1]


def _fits(items: Mapping[str, Any], limit: int) -> bool:
    """Does the canonical JSON of ``items`` (text keys and values) surely fit in ``limit``
    bytes? Told without encoding it: a character takes at most 6 bytes (an escape), an item
    6 more (quotes, colon, comma)."""
    total = 2
    for k, v in items.items():
        if not isinstance(k, str) or not isinstance(v, str):
            return False
        total += 6 * (len(k) + len(v) + 1)
    return total <= limit


def _digest(data: bytes) -> dict[str, Any]:
    return {"sha256": sha256(data).hexdigest(), "size": len(data)}


def _text_map(items: Mapping[str, str]) -> str:
    """The canonical JSON of a mapping of text to text, as ``_canonical`` writes it."""
    return "{" + ",".join([_quote(k) + ":" + _quote(v) for k, v in sorted(items.items())]) + "}"


def _context_field(context: Mapping[str, str]) -> str:
    """The entry's ``context`` field; a large context as ``context_digest``: the SHA-256 of
    its canonical encoding (docs/format.md 5.4), its size and entry count, so it can still be
    matched against an envelope."""
    plain = dict(context)
    if _fits(plain, MAX_CONTEXT_BYTES):
        return '"context":' + _text_map(plain)
    text = _ENCODER.encode(plain)
    if len(text.encode()) <= MAX_CONTEXT_BYTES:
        return '"context":' + text
    summary = {**_digest(encode_context(plain)), "entries": len(plain)}
    return '"context_digest":' + _ENCODER.encode(summary)


def _detail_field(detail: Mapping[str, Any]) -> str:
    """The entry's ``detail`` field, or ``detail_digest`` if it is large."""
    text = _ENCODER.encode(dict(detail))
    data = text.encode()
    if len(data) > _MAX_DETAIL_BYTES:
        return '"detail_digest":' + _ENCODER.encode(_digest(data))
    return '"detail":' + text


def _key_field(key: str) -> str:
    """The entry's ``key`` field; a long key id cut, with ``key_digest`` of the whole."""
    if len(key) <= MAX_KEY_CHARS:
        return '"key":' + _quote(key)
    digest = _digest(key.encode("utf-8", "surrogatepass"))
    return (
        '"key":' + _quote(key[:MAX_KEY_CHARS] + "...") + ',"key_digest":' + _ENCODER.encode(digest)
    )


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


@dataclass(frozen=True, slots=True)
class _Head:
    """audit.head, authenticated: the entry it records (``gen``/``offset`` None in the older
    formats that lacked them)."""

    seq: int
    hash: str
    gen: int | None
    offset: int | None


@dataclass(slots=True)
class _End:
    """Where the chain ends, as this process last read or wrote the log."""

    seq: int
    hash: str
    gen: int
    """The highest keystore generation recorded up to here."""
    entry: int | None
    """Byte offset of entry ``seq`` in the log (None: not found there, e.g. an edited log)."""
    size: int
    """Bytes of the log read, up to the end of its last complete line."""
    file: tuple[int, int]
    """(device, inode) of the log ((0, 0): no log yet)."""


@dataclass(frozen=True, slots=True)
class _Followed:
    """What :meth:`AuditLog._follow` found in bytes read after a known entry."""

    seq: int
    hash: str
    gen: int
    entry: int | None
    used: int
    """Bytes up to the end of the last complete line."""
    torn: bool
    """Bytes after it: a last line without its newline (a process died writing it)."""
    broken: bool
    """A complete line did not chain on (entries after it were not followed)."""
    changed: bool
    """An entry other than a wrap or unwrap was followed (a key change)."""


def _entry(line: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _generation(entry: Mapping[str, Any]) -> int | None:
    gen = entry.get("gen")
    return gen if isinstance(gen, int) and not isinstance(gen, bool) else None


class _LogFile:
    """The log's append descriptor (``O_APPEND``), kept open, and the file it was opened on."""

    __slots__ = ("fd", "file")

    def __init__(self) -> None:
        self.fd: int | None = None
        self.file: tuple[int, int] = (0, 0)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class AuditLog:
    """Appends to and verifies ``audit.log``.

    ``sync``: when wrap and unwrap records reach the disk (``durability.py``). ``lock``: the
    keystore's lock (a keystore passes its own; it is re-entrant, so callers may hold it).
    Call :meth:`close` (or :meth:`flush`) to sync pending records before the object is dropped;
    records are synced at normal interpreter exit too.
    """

    def __init__(
        self,
        directory: Path,
        key: bytes,
        *,
        sync: SyncMode = DEFAULT_SYNC,
        lock: FileLock | None = None,
    ) -> None:
        self.path = directory / "audit.log"
        self._path = os.fspath(self.path)
        self.head_path = directory / "audit.head"
        self._key = key
        self.sync: SyncMode = parse_sync_mode(sync)
        self.lock = keystore_lock(directory) if lock is None else lock
        self._log = _LogFile()
        finalizer = weakref.finalize(self, self._log.close)
        finalizer.atexit = False  # the exit-time flush still writes through it
        self._end: _End | None = None
        self._checked = (-1, False)  # (lock token, for writing): _end holds for that hold
        self._last_context: tuple[Mapping[str, str], str] = ({}, "")
        self._synced: tuple[tuple[int, int], int] | None = None
        self._commit = GroupCommit(self._sync_batch, "batch")
        self.epoch = 0
        """Changes when a key change is appended or seen, or the log is read afresh: what a
        keystore caches about its keys is checked again then."""

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, sync={self.sync!r})"

    # -- the head --------------------------------------------------------------------------

    def _hash(self, prev: str, body: Mapping[str, Any]) -> str:
        return self._hash_bytes(prev, _canonical(body))

    def _hash_bytes(self, prev: str, canonical: bytes) -> str:
        return hmac.digest(self._key, prev.encode() + b"\n" + canonical, "sha256").hex()

    def _head_mac(self, seq: int, digest: str, generation: int | None, offset: int | None) -> str:
        # Each format has its own MAC input, so a current head cannot be passed off as an older
        # one by dropping its offset or generation.
        if generation is None:
            text = f"audit.head|{seq}|{digest}"
        elif offset is None:
            text = f"audit.head/2|{seq}|{digest}|{generation}"
        else:
            text = f"audit.head/3|{seq}|{digest}|{generation}|{offset}"
        return hmac.new(self._key, text.encode(), sha256).hexdigest()

    def _read_head(self) -> _Head | None:
        """The authenticated head, or None if there is no head file."""
        try:
            data = json.loads(read_regular(self.head_path, refuse=KEYSTORE_FILES))
            seq, digest, mac = int(data["seq"]), str(data["hash"]), str(data["mac"])
            gen, offset = data.get("gen"), data.get("offset")
            for value in (gen, offset):
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise ValueError
            if offset is not None and (gen is None or offset < 0):
                raise ValueError
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AuditLogError(f"{self.head_path}: audit head is unreadable (edited?)") from None
        if not hmac.compare_digest(mac, self._head_mac(seq, digest, gen, offset)):
            raise AuditLogError(f"{self.head_path}: audit head was modified (MAC mismatch)")
        return _Head(seq, digest, gen, offset)

    def _head_doc(self, end: _End) -> bytes:
        doc = {
            "seq": end.seq,
            "hash": end.hash,
            "gen": end.gen,
            "offset": end.entry,
            "mac": self._head_mac(end.seq, end.hash, end.gen, end.entry),
        }
        return _canonical(doc)

    def _missing_head(self) -> AuditLogError:
        return AuditLogError(
            f"{self.head_path} is missing but {self.path} has entries: "
            "the audit trail was tampered with (run 'kmsenvelope audit verify')"
        )

    # -- reading the log -------------------------------------------------------------------

    def _read_from(self, offset: int) -> tuple[bytes, tuple[int, int]]:
        """The log's bytes from ``offset`` to its end, and its (device, inode)."""
        try:
            fd = open_regular(self.path, os.O_RDONLY, refuse=KEYSTORE_FILES)
        except FileNotFoundError:
            return b"", (0, 0)
        try:
            st = os.fstat(fd)
            parts = []
            while True:
                chunk = os.pread(fd, _READ_CHUNK, offset)
                if not chunk:
                    break
                parts.append(chunk)
                offset += len(chunk)
            return b"".join(parts), (st.st_dev, st.st_ino)
        finally:
            os.close(fd)

    def _authentic(self, entry: Mapping[str, Any]) -> bool:
        """Does ``entry``'s hash match its own content and ``prev``?"""
        prev, stored = entry.get("prev"), entry.get("hash")
        if not isinstance(prev, str) or not isinstance(stored, str):
            return False
        body = {k: v for k, v in entry.items() if k != "hash"}
        return hmac.compare_digest(stored, self._hash(prev, body))

    def _valid_successor(self, entry: Mapping[str, Any] | None, seq: int, prev: str) -> bool:
        """Is ``entry`` a correctly chained entry ``seq + 1`` after ``prev``?"""
        if entry is None or entry.get("seq") != seq + 1 or entry.get("prev") != prev:
            return False
        return self._authentic(entry)

    def _follow(self, data: bytes, base: int, seq: int, prev: str, gen: int) -> _Followed:
        """Follow the chain from entry ``seq`` (hash ``prev``) through ``data``, the log's bytes
        from offset ``base``: every complete line must be the next entry."""
        pos, entry_at, broken, changed = 0, None, False, False
        while True:
            newline = data.find(b"\n", pos)
            if newline < 0:
                break
            if not broken:
                entry = _entry(data[pos:newline])
                if entry is not None and self._valid_successor(entry, seq, prev):
                    seq, prev, entry_at = entry["seq"], entry["hash"], base + pos
                    gen = max(gen, _generation(entry) or 0)
                    changed = changed or entry.get("op") not in WRAP_OPS
                else:
                    broken = True
            pos = newline + 1
        return _Followed(seq, prev, gen, entry_at, pos, pos < len(data), broken, changed)

    def _scan_generation(self) -> int:
        """The highest generation any entry records, read from the whole log: only for a head
        written before heads kept it (the next head written records it)."""
        try:
            raw = read_regular(self.path, refuse=KEYSTORE_FILES)
        except FileNotFoundError:
            return 0
        highest = 0
        for line in raw.split(b"\n"):
            if b'"gen":' not in line:
                continue
            entry = _entry(line)
            if entry is not None:
                highest = max(highest, _generation(entry) or 0)
        return highest

    def _locate(self, head: _Head) -> int | None:
        """Where the head's entry starts, for a head written before heads kept the offset
        (the entry was then the log's last or the one before): the tail first, else all."""
        needle = b'"hash":"' + head.hash.encode() + b'"'
        try:
            size = os.lstat(self.path).st_size
        except FileNotFoundError:
            return None
        for start in dict.fromkeys((max(0, size - _LEGACY_TAIL), 0)):
            data, _ = self._read_from(start)
            found = data.rfind(needle)
            if found >= 0:
                line_start = data.rfind(b"\n", 0, found) + 1
                if line_start > 0 or start == 0:
                    return start + line_start
        return None

    def _load(self, *, writing: bool) -> _End:
        """Where the chain ends, read afresh: the head, then the log from the head's entry to
        its end (a torn last line is removed when ``writing``)."""
        self.epoch += 1
        head = self._read_head()
        if head is None:
            data, file = self._read_from(0)
            if b"\n" in data:
                raise self._missing_head()
            if data and writing:
                self._truncate(0)
            return _End(0, GENESIS, 0, None, 0, file)
        gen = head.gen if head.gen is not None else self._scan_generation()
        start = head.offset if head.offset is not None else self._locate(head)
        if start is not None:
            data, file = self._read_from(start)
            newline = data.find(b"\n")
            first = _entry(data[:newline]) if newline >= 0 else None
            if (
                first is not None
                and first.get("seq") == head.seq
                and first.get("hash") == head.hash
                and self._authentic(first)
            ):
                gen = max(gen, _generation(first) or 0)
                base = start + newline + 1
                found = self._follow(data[newline + 1 :], base, head.seq, head.hash, gen)
                size = base + found.used
                if found.torn and writing:
                    self._truncate(size)
                entry = start if found.entry is None else found.entry
                return _End(found.seq, found.hash, found.gen, entry, size, file)
        # The log does not hold the head's entry where the head says (edited, truncated or
        # replaced): chain on from the head, as 'audit verify' then reports.
        data, file = self._read_from(0)
        size = data.rfind(b"\n") + 1
        if writing and size < len(data):
            self._truncate(size)
        return _End(head.seq, head.hash, gen, None, size, file)

    def _truncate(self, size: int) -> None:
        """Cut a last line a process died writing (appending, under the exclusive lock)."""
        fd = self._log.fd
        assert fd is not None
        os.ftruncate(fd, size)
        os.fsync(fd)

    def _open_log(self, st: os.stat_result | None) -> os.stat_result:
        """Make sure the append descriptor is open on the file at the log's path."""
        if self._log.fd is not None and st is not None and (st.st_dev, st.st_ino) == self._log.file:
            return st
        self._log.close()
        fd = open_regular(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, refuse=KEYSTORE_FILES)
        opened = os.fstat(fd)
        self._log.fd, self._log.file = fd, (opened.st_dev, opened.st_ino)
        return opened

    def _current(self, *, writing: bool) -> _End:
        """Where the chain ends now (hold the keystore's lock: exclusive when ``writing``).

        From what this process knows when the log is as it left it; else from what was
        appended since; else read afresh (:meth:`_load`).
        """
        checked = self._checked
        if self._end is not None and checked[0] == self.lock.token and (checked[1] or not writing):
            return self._end  # checked under this very hold: nobody else changed the log
        try:
            st: os.stat_result | None = os.lstat(self._path)
        except FileNotFoundError:
            st = None
        if writing:
            st = self._open_log(st)
        self._checked = (-1, False)
        end = self._end
        if (
            end is not None
            and st is not None
            and stat.S_ISREG(st.st_mode)
            and (st.st_dev, st.st_ino) == end.file
            and st.st_size >= end.size
        ):
            if st.st_size == end.size:
                self._checked = (self.lock.token, writing)
                return end
            data, file = self._read_from(end.size)
            if file == end.file:
                found = self._follow(data, end.size, end.seq, end.hash, end.gen)
                if not found.broken:
                    if found.changed:
                        self.epoch += 1
                    size = end.size + found.used
                    if found.torn and writing:
                        self._truncate(size)
                    entry = end.entry if found.entry is None else found.entry
                    self._end = _End(found.seq, found.hash, found.gen, entry, size, file)
                    self._checked = (self.lock.token, writing)
                    return self._end
        self._end = None
        self._end = self._load(writing=writing)
        self._checked = (self.lock.token, writing)
        return self._end

    def generation(self) -> int:
        """The highest keystore generation the log records (0 if none): from the MAC'd head
        and the entries after it (only what changed since this process last looked)."""
        with self.lock.shared:
            # inside a change (exclusive): as an append would, torn tail removed
            return self._current(writing=self.lock.exclusive_now).gen

    # -- appending -------------------------------------------------------------------------

    def append(
        self,
        op: str,
        key: str,
        outcome: str = "ok",
        context: Mapping[str, str] | None = None,
        detail: Mapping[str, Any] | None = None,
        *,
        generation: int | None = None,
        peer: tuple[int, int] | None = None,
    ) -> None:
        """Append one entry (takes the keystore's exclusive lock, which the caller may hold).

        ``generation``: the keystore generation a key change produced, recorded in the entry
        and (the highest so far) in the head, so that a keystore.json rolled back behind the
        log is refused. ``peer``: the (uid, pid) of the process a daemon served. A wrap or
        unwrap record in ``batch`` mode is written now and synced within the window (after the
        lock is released); every other record is fsynced and recorded in the head now.
        """
        durable = self.sync == "always" or op not in WRAP_OPS
        with self.lock.exclusive:
            end = self._current(writing=True)
            if op not in WRAP_OPS:
                # a key change: read the head and the log from it afresh (a head deleted or
                # edited since is refused here, as before the keystore kept the log open)
                end = self._end = self._load(writing=True)
            # The entry's canonical JSON (sorted keys, as _canonical writes it) in two parts,
            # the fields that sort before "hash" and those after, so the line is the same text
            # with the hash put in between: no second encoding.
            before = []
            if context:
                last_context, field = self._last_context
                if context != last_context:
                    field = _context_field(context)
                    self._last_context = (dict(context), field)
                before.append(field)
            if detail:
                before.append(_detail_field(detail))
            highest = end.gen
            if generation is not None:
                before.append(f'"gen":{int(generation)}')
                highest = max(highest, generation)
            peer_fields = (
                "" if peer is None else f',"peer_pid":{int(peer[1])},"peer_uid":{int(peer[0])}'
            )
            head = ",".join(before) + "," if before else ""
            tail = (
                f'{_key_field(key)},"op":{_quote(op)},"outcome":{_quote(outcome[:200])}'
                f'{peer_fields},"pid":{os.getpid()},"prev":{_quote(end.hash)},'
                f'"seq":{end.seq + 1},"time":{_quote(_now())}'
            )
            digest = self._hash_bytes(end.hash, ("{" + head + tail + "}").encode())
            line = ("{" + head + '"hash":"' + digest + '",' + tail + "}\n").encode()
            fd = self._log.fd
            assert fd is not None
            self._end = None  # unknown until the line is written whole
            if os.write(fd, line) != len(line):
                raise AuditLogError(f"{self.path}: audit record cut short (disk full?)")
            self._end = new = _End(
                end.seq + 1, digest, highest, end.size, end.size + len(line), end.file
            )
            if op not in WRAP_OPS:
                self.epoch += 1
            if durable or end.seq == 0:
                os.fsync(fd)
                atomic_write(self.head_path, self._head_doc(new), refuse=KEYSTORE_FILES)
                self._synced = (new.file, new.seq)
                self._commit.synced()  # this fsync covered the records written before it
            else:
                self.lock.defer(self._commit.appended)

    def _sync_batch(self) -> None:
        """One group commit: fsync the log, then move the head to the log's end. The records
        are made durable first, without the keystore's lock (an operation holding it, a backup
        deriving its key, does not delay them); the head moves under the lock, to an end
        fsynced in turn. Nothing else is changed (a torn last line is left to the next
        append), nor recreated if the keystore was removed meanwhile."""
        if self._fsync_log(None) is None:
            return
        end = self._sync_point()
        if end is None or self._fsync_log(end.file) is None:
            return
        tmp: str | None = prepare_replace(self.head_path, self._head_doc(end))
        try:
            try:
                self.lock.acquire(create=False)
            except FileNotFoundError:
                return
            try:
                head = self._read_head()
                if head is None:
                    raise self._missing_head()
                if head.seq < end.seq and self._end is not None and self._end.file == end.file:
                    assert tmp is not None
                    finish_replace(tmp, self.head_path, refuse=KEYSTORE_FILES)
                    tmp = None
                self._covered(end)
            finally:
                self.lock.release()
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        fsync_dir(self.head_path.parent)

    def _fsync_log(self, file: tuple[int, int] | None) -> tuple[int, int] | None:
        """fsync the file at the log's path (if it is ``file``, when given); its (device,
        inode), or None if it is gone or another file."""
        try:
            fd = open_regular(self.path, os.O_RDONLY, refuse=KEYSTORE_FILES)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            ident = (st.st_dev, st.st_ino)
            if file is not None and ident != file:
                return None
            os.fsync(fd)
            return ident
        finally:
            os.close(fd)

    def _sync_point(self) -> _End | None:
        """The end a group commit is to sync, or None if nothing needs it: synced already,
        covered by a head another writer moved past it (heads move only after an fsync), or
        the keystore is gone."""
        try:
            self.lock.acquire(create=False)
        except FileNotFoundError:
            return None
        try:
            if not os.path.lexists(self.path):
                return None
            end = self._current(writing=False)
            if self._synced == (end.file, end.seq) or end.entry is None:
                return None  # synced; or the chain's end is not in the log (verify says so)
            head = self._read_head()
            if head is None:
                raise self._missing_head()
            if head.seq >= end.seq:
                self._covered(end)
                return None
            return end
        finally:
            self.lock.release()

    def _covered(self, end: _End) -> None:
        """Records up to ``end`` are synced and the head is at or past it."""
        synced = self._synced
        if synced is None or synced[0] != end.file or synced[1] < end.seq:
            self._synced = (end.file, end.seq)

    def flush(self) -> None:
        """Sync every record written so far (``batch``); do not call it holding the lock."""
        self._commit.flush()

    def close(self) -> None:
        """Flush, stop the sync thread and close the log (reopened if used again)."""
        commit, self._commit = self._commit, GroupCommit(self._sync_batch, "batch")
        try:
            commit.close()
        finally:
            with self.lock.exclusive:
                self._log.close()
                self._end = None
                self._checked = (-1, False)

    # -- verifying -------------------------------------------------------------------------

    def anchor(self) -> str:
        """Verify the log and return its end as an anchor (``SEQ:HASH``) to keep elsewhere."""
        return self.verify().anchor

    def verify(self, anchor: str | None = None) -> AuditReport:
        """Check every entry and the head; raise ``AuditLogError`` saying where it breaks.

        The log must pass through the head's entry, at the head's offset, and every entry
        after it must chain on (the log runs ahead of the head by the records not yet synced).
        Keystore generations must strictly increase along the chain (a generation recorded
        again means the keystore was rolled back and changed again), and the head's generation
        must be the log's up to it. With ``anchor`` (from :meth:`anchor`), also prove the
        anchored entry is still in the chain: a log rolled back to an older copy (with its
        head) passes the chain checks but not this one.
        """
        anchored = None if anchor is None else parse_anchor(anchor)
        with self.lock.shared:
            head = self._read_head()
            if head is None:
                raise AuditLogError(
                    f"{self.head_path} is missing: the audit trail was deleted or replaced"
                )
            try:
                raw = read_regular(self.path, refuse=KEYSTORE_FILES)
            except FileNotFoundError:
                raw = b""
        head_seq, head_hash, head_gen = head.seq, head.hash, head.gen
        prev = GENESIS
        count = 0
        generation = 0
        offset = 0
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for lineno, line in enumerate(lines, 1):
            where = f"{self.path}:{lineno}"
            line_start, offset = offset, offset + len(line) + 1
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
            if seq == head_seq and head.offset is not None and head.offset != line_start:
                raise AuditLogError(
                    f"{where}: entry {seq} starts at byte {line_start} but the head records "
                    f"byte {head.offset}: bytes before it were removed or inserted"
                )
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
        # The log may run ahead of the head (records not yet synced), never end before it.
        if count < head_seq or (count == head_seq and not hmac.compare_digest(prev, head_hash)):
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
