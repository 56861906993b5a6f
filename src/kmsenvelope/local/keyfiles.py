"""The keystore's files on disk: keystore.json and keys/NAME.json, each under its MAC, the key
material sealed inside them, and the generations that refuse an older copy put back.

Layout of a keystore directory (mode 0700, every file 0600, every write atomic)::

    keystore.json    format marker, keystore id, Argon2id parameters and salt, passphrase check
                     (``unlock.py``), and (format 2) the keystore *generation* and, per key, the
                     generation and MAC of its current key file -- all under an HMAC
    keys/NAME.json   one key: identity (uuid), type, enabled flag, current version, versions
                     (material encrypted with AES-256-GCM under a key derived from the
                     passphrase), the generation that wrote it, and an HMAC over the whole file
    audit.log        hash-chained audit entries (see ``audit.py``); audit.head: the chain's end
    .lock            flock target serializing changes across processes

An unlocked keystore keeps what it read (keystore.json, key files, key material opened for use)
and checks it on every operation, cheaply: the ``lstat`` of keystore.json and of the key file
(device, inode, size, modification and change times: every write is a rename of a new file), and
the audit log, in which every key change any process makes is recorded. A change made by another
process, or a file put back, is seen by the next operation.

Anti-rollback: every change writes its key files with generation G+1, then keystore.json with
generation G+1 and the new files' MACs. A key file is accepted only if keystore.json records its
MAC, or (a change interrupted between the two writes) its generation is exactly G+1; an older,
validly MAC'd copy replayed into ``keys/`` is refused. Keystores of format 1 (kmsenvelope 0.1,
no generations) stay readable and are upgraded by the first change. keystore.json and the key
files rolled back together are refused too, as long as the audit log was not: each change
records its generation in the log and its MAC'd head, and a keystore.json whose generation is
below the log's is refused when the keystore is opened and on every operation. Replacing
*every* file at once, the log included, cannot be seen from inside: an audit anchor kept
elsewhere proves the log itself was not rolled back (``audit.py``).
"""

from __future__ import annotations

import hmac
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ConfigError, KeyNotFoundError, KeystoreCorruptError, KeystoreError
from ..safe_files import atomic_write, read_regular
from .audit import AuditLog
from .encoding import b64, canonical, unb64
from .files import KEYSTORE_FILES
from .unlock import LEGACY_STORE_FORMAT, STORE_FILE, STORE_FORMAT, StoreKeys, make_check

__all__ = [
    "KEY_FORMAT",
    "VERSION_PATTERN",
    "KeyFiles",
    "check_name",
    "find_version",
    "key_document",
    "recorded",
]

KEY_FORMAT = "kmsenvelope-key/1"
"""The format marker of a key file (keys/NAME.json)."""
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,9}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_CACHED_KEYS = 1024
_CACHED_MATERIAL = 256

_Stamp = tuple[int, int, int, int, int]
"""What ``lstat`` says about a file: device, inode, size, mtime and ctime (ns)."""


def _stamp(path: str) -> _Stamp | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class _Seen:
    """A file as read: its stamp, the audit epoch then, and its checked content."""

    path: str
    stamp: _Stamp
    epoch: int
    doc: dict[str, Any]
    meta: Mapping[str, Any] | None = None
    """For a key file: the keystore.json it was checked against."""


def check_name(name: str) -> str:
    """Validate a key name (letters, digits, ``_ . -``; at most 128 characters)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid key name {name!r}: use 1-128 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name


def key_document(
    name: str,
    key_type: str,
    *,
    key_uuid: str,
    created: str,
    enabled: bool,
    current: int,
    versions: list[dict[str, Any]],
) -> dict[str, Any]:
    """A key file's content before it is committed (which adds its generation and MAC)."""
    return {
        "format": KEY_FORMAT,
        "name": name,
        "uuid": key_uuid,
        "type": key_type,
        "created": created,
        "enabled": enabled,
        "current": current,
        "versions": versions,
    }


def find_version(doc: Mapping[str, Any], version: int) -> dict[str, Any] | None:
    """The entry of ``version`` in key file ``doc`` (the live entry, to update in place)."""
    for v in doc["versions"]:
        if int(v["version"]) == version:
            entry: dict[str, Any] = v
            return entry
    return None


def recorded(meta: Mapping[str, Any], name: str) -> bool:
    """Does keystore.json (format 2) record key ``name``?"""
    return meta["format"] == STORE_FORMAT and name in meta["keys"]


def _check_current(
    name: str, doc: Mapping[str, Any], meta: Mapping[str, Any], path: Path, meta_path: Path
) -> None:
    """Refuse a validly MAC'd key file that is not the one keystore.json (``meta``) records.

    Accepted: the file whose MAC is recorded, or one of generation G+1 (written by a change
    interrupted before it updated keystore.json). In a format-1 keystore every key file is
    accepted, but none may carry a generation (keystore.json was then replaced with an older
    copy, to get around the records).
    """
    generation = doc.get("generation")
    if meta["format"] == LEGACY_STORE_FORMAT:
        if generation is not None:
            raise KeystoreCorruptError(
                f"{meta_path} is older than {path} (it has no generations, the key "
                "file has one): keystore.json was replaced with an older copy"
            )
        return
    record = meta["keys"].get(name)
    if isinstance(record, dict) and hmac.compare_digest(str(record.get("mac")), doc["mac"]):
        return
    if generation == int(meta["generation"]) + 1:
        return  # written by a change interrupted before it updated keystore.json
    if not isinstance(record, dict):
        raise KeystoreCorruptError(
            f"{path}: key file is not recorded in the keystore (copied in from an "
            "older state or from elsewhere?); remove it or restore from a backup"
        )
    recorded_generation = record.get("generation")
    seen = 0 if generation is None else generation
    if isinstance(recorded_generation, int) and seen < recorded_generation:
        raise KeystoreCorruptError(
            f"{path}: key file was rolled back: it is generation {seen} but the keystore "
            f"records generation {recorded_generation} (an older copy was put back); put back the "
            "current file or restore the key from a backup"
        )
    raise KeystoreCorruptError(
        f"{path}: key file is not the one the keystore records (generation {recorded_generation}): "
        "it was replaced; put back the current file or restore the key from a backup"
    )


class KeyFiles:
    """The files of one unlocked keystore, read and written under their MACs (callers hold the
    keystore's lock); keystore.json is never accepted older than the audit log."""

    def __init__(self, directory: Path, store_id: str, keys: StoreKeys, audit: AuditLog) -> None:
        self.directory = directory
        self.id = store_id
        self._keys = keys
        self._audit = audit
        self._meta_file = os.fspath(directory / STORE_FILE)
        self._meta: _Seen | None = None
        self._docs: dict[str, _Seen] = {}
        # Opened AES key material, per (name, version, sealed material): AESGCM objects ready
        # to use. Per unlocked keystore only, never module-wide; dropped with the key's file.
        self._aeads: dict[tuple[str, int, str], AESGCM] = {}

    # -- what this keystore read, checked on every operation ---------------------------------

    def current_meta(self) -> Mapping[str, Any]:
        """keystore.json as :meth:`read_meta` returns it, read again only if it or the audit
        log changed (hold the keystore's lock; do not change the result)."""
        logged = self._audit.generation()  # before keystore.json, as read_meta
        stamp = _stamp(self._meta_file)
        seen = self._meta
        if (
            seen is not None
            and seen.stamp == stamp
            and seen.epoch == self._audit.epoch
            and int(seen.doc.get("generation", 0)) >= logged
        ):
            return seen.doc
        self._meta = None
        doc = self.read_meta()
        if stamp is not None:
            self._meta = _Seen(self._meta_file, stamp, self._audit.epoch, doc)
        return doc

    def current_key(self, name: str, meta: Mapping[str, Any]) -> Mapping[str, Any]:
        """Key ``name``'s file as :meth:`load` returns it, read again only if it changed or
        ``meta`` is another keystore.json (hold the keystore's lock; do not change it)."""
        seen = self._docs.get(name)
        if seen is not None and seen.meta is meta and seen.stamp == _stamp(seen.path):
            return seen.doc
        path = os.fspath(self.key_path(name))
        stamp = _stamp(path)
        self._forget(name)
        doc = self.load(name, meta)
        if stamp is not None:
            if len(self._docs) >= _CACHED_KEYS:
                self._forget(next(iter(self._docs)))
            self._docs[name] = _Seen(path, stamp, self._audit.epoch, doc, meta)
        return doc

    def _forget(self, name: str) -> None:
        """Drop what is kept of key ``name`` (its file changed: its material may be gone)."""
        self._docs.pop(name, None)
        for cached in [k for k in self._aeads if k[0] == name]:
            del self._aeads[cached]

    def forget_all(self) -> None:
        """Drop everything kept (after this keystore changed its own files)."""
        self._meta = None
        self._docs.clear()
        self._aeads.clear()

    def aead(self, name: str, version: int, sealed: str) -> AESGCM:
        """The AES-GCM key of ``name``/``version`` (sealed as ``sealed``), opened once."""
        cache_key = (name, version, sealed)
        aead = self._aeads.get(cache_key)
        if aead is None:
            aead = AESGCM(self.open_material(name, version, sealed, self.key_path(name)))
            if len(self._aeads) >= _CACHED_MATERIAL:
                self._aeads.pop(next(iter(self._aeads)))
            self._aeads[cache_key] = aead
        return aead

    # -- keystore.json: the generation and the record of every key file ---------------------

    @property
    def meta_path(self) -> Path:
        return self.directory / STORE_FILE

    def _verify_meta(self, doc: Mapping[str, Any]) -> None:
        """Check keystore.json's MAC (format 2; format 1 has none)."""
        if doc.get("format") == LEGACY_STORE_FORMAT:
            return
        stored = doc.get("mac")
        if (
            not isinstance(stored, str)
            or not hmac.compare_digest(stored, self.mac(doc))
            or doc.get("id") != self.id
            or not isinstance(doc.get("generation"), int)
            or not isinstance(doc.get("keys"), dict)
        ):
            raise KeystoreCorruptError(
                f"{self.meta_path}: failed its integrity check (edited or corrupted)"
            )

    def read_meta(self) -> dict[str, Any]:
        """keystore.json, authenticated and not older than the audit log.

        The log's generation is read *before* keystore.json: a change writes keystore.json
        before its audit record, so whatever log state is read, the keystore.json read after
        it is at least as new, even without the lock (``open``) while another process commits.
        """
        logged = self._audit.generation()
        try:
            doc = json.loads(read_regular(self.meta_path, refuse=KEYSTORE_FILES))
            if not isinstance(doc, dict) or doc.get("format") not in (
                STORE_FORMAT,
                LEGACY_STORE_FORMAT,
            ):
                raise ValueError
        except FileNotFoundError:
            raise KeystoreCorruptError(f"{self.meta_path} is missing") from None
        except ValueError:
            raise KeystoreCorruptError(f"{self.meta_path}: not a valid keystore file") from None
        self._verify_meta(doc)
        have = int(doc.get("generation", 0))  # format 1: none, as before any generation
        if have < logged:
            raise KeystoreCorruptError(
                f"{self.meta_path} is older than the audit log: restored from an older copy? "
                f"(it is at generation {have}, the log records generation {logged}); put back "
                "the current keystore.json and key files"
            )
        return doc

    def write_meta(self, doc: dict[str, Any]) -> None:
        """Sign and write keystore.json."""
        doc["mac"] = self.mac(doc)
        atomic_write(self.meta_path, json.dumps(doc, indent=2).encode(), refuse=KEYSTORE_FILES)

    def prepare(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Before a change: upgrade a format-1 keystore, or adopt the key files of a change
        interrupted before it updated keystore.json. Returns keystore.json to commit to."""
        if meta["format"] == LEGACY_STORE_FORMAT:
            return self._upgrade(meta)
        pending = int(meta["generation"]) + 1
        adopted = False
        for name, doc in self._scan():
            if doc.get("generation") == pending:
                meta["keys"][name] = {"generation": pending, "mac": doc["mac"]}
                adopted = True
        if adopted:
            meta["generation"] = pending
            self.write_meta(meta)
        return meta

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every key file with a valid MAC (others are skipped here; loading reports them)."""
        for path in sorted((self.directory / "keys").glob("*.json")):
            try:
                doc = json.loads(read_regular(path, refuse=KEYSTORE_FILES))
            except (OSError, ValueError, KeystoreError):
                continue
            if (
                isinstance(doc, dict)
                and doc.get("name") == path.stem
                and isinstance(doc.get("mac"), str)
                and hmac.compare_digest(doc["mac"], self.mac(doc))
            ):
                yield path.stem, doc

    def _upgrade(self, legacy: Mapping[str, Any]) -> dict[str, Any]:
        """Format 1 -> 2: record every current key file (generation 0) under keystore.json's
        MAC, and bind the new format into the passphrase check."""
        records = {}
        for name in self.names(legacy):
            doc = self.load(name, legacy)
            records[name] = {"generation": 0, "mac": doc["mac"]}
        meta: dict[str, Any] = {
            **{k: legacy[k] for k in ("id", "created", "kdf")},
            "format": STORE_FORMAT,
            "check": b64(make_check(self._keys, self.id, STORE_FORMAT)),
            "generation": 0,
            "keys": records,
        }
        self.write_meta(meta)
        return meta

    def commit(self, meta: dict[str, Any], docs: list[dict[str, Any]]) -> int:
        """Write ``docs`` as generation G+1, then keystore.json; return the new generation,
        which the caller then records in the audit log.

        The order is what keeps a crash from locking the user out. Key files first: a crash
        before keystore.json leaves them one generation ahead, adopted by the next change
        (:meth:`prepare`). keystore.json before the audit record: a crash between the two
        leaves keystore.json ahead of the log, which is accepted (only *behind* the log is
        refused), and the next change records a higher generation; the change itself goes
        unaudited. The opposite order would leave the log ahead of a keystore.json that was
        never rolled back, and every later open would refuse it.
        """
        generation = int(meta["generation"]) + 1
        for doc in docs:
            doc["generation"] = generation
            doc.setdefault("uuid", str(uuid.uuid4()))
            doc["mac"] = self.mac(doc)
            atomic_write(
                self.key_path(doc["name"]),
                json.dumps(doc, indent=2).encode(),
                refuse=KEYSTORE_FILES,
            )
        for doc in docs:
            meta["keys"][doc["name"]] = {"generation": generation, "mac": doc["mac"]}
        meta["generation"] = generation
        self.write_meta(meta)
        return generation

    def names(self, meta: Mapping[str, Any]) -> list[str]:
        """Every key name: recorded in keystore.json or present in keys/."""
        names = {p.stem for p in (self.directory / "keys").glob("*.json")}
        if meta["format"] == STORE_FORMAT:
            names.update(meta["keys"])
        return sorted(names)

    # -- key files --------------------------------------------------------------------------

    def key_path(self, name: str) -> Path:
        return self.directory / "keys" / f"{check_name(name)}.json"

    def _material_aad(self, name: str, version: int) -> bytes:
        return f"{KEY_FORMAT}|{self.id}|{name}|{version}".encode()

    def seal_material(self, name: str, version: int, raw: bytes) -> str:
        """Key material of ``name``/``version``, encrypted for its key file."""
        nonce = os.urandom(12)
        return b64(
            nonce + AESGCM(self._keys.enc).encrypt(nonce, raw, self._material_aad(name, version))
        )

    def open_material(self, name: str, version: int, sealed: str, path: Path) -> bytes:
        """The key material :meth:`seal_material` sealed (``path``: the file, for messages)."""
        blob = unb64(sealed, str(path))
        try:
            return AESGCM(self._keys.enc).decrypt(
                blob[:12], blob[12:], self._material_aad(name, version)
            )
        except (InvalidTag, ValueError):
            raise KeystoreCorruptError(
                f"{path}: key material for version {version} does not decrypt "
                "(corrupted, or copied from another keystore)"
            ) from None

    def mac(self, doc: Mapping[str, Any]) -> str:
        """The HMAC of a keystore file's content (all but its ``mac`` field)."""
        body = {k: v for k, v in doc.items() if k != "mac"}
        return hmac.new(self._keys.mac, canonical(body), sha256).hexdigest()

    def load(self, name: str, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Key ``name``'s file, authenticated and checked to be the current one."""
        meta = self.read_meta() if meta is None else meta
        path = self.key_path(name)
        try:
            raw = read_regular(path, refuse=KEYSTORE_FILES)
        except FileNotFoundError:
            if recorded(meta, name):
                raise KeyNotFoundError(
                    f"local:{name}: no such key in the keystore at {self.directory}: its file "
                    "is missing although the keystore records it (deleted?); restore it from "
                    "a backup"
                ) from None
            raise KeyNotFoundError(
                f"local:{name}: no such key in the keystore at {self.directory}"
            ) from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
                raise ValueError
            stored = doc.get("mac")
        except ValueError:
            raise KeystoreCorruptError(f"{path}: key file is not valid (corrupted?)") from None
        if not isinstance(stored, str) or not hmac.compare_digest(stored, self.mac(doc)):
            raise KeystoreCorruptError(
                f"{path}: key file failed its integrity check (edited or corrupted); "
                "restore it from a backup"
            )
        if doc.get("name") != name:
            raise KeystoreCorruptError(f"{path}: key file holds key {doc.get('name')!r}")
        _check_current(name, doc, meta, path, self.meta_path)
        return doc
