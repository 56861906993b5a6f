"""The local software HSM's keystore: the key lifecycle (create, rotate, disable and enable,
destroy), wrapping and unwrapping data keys, and the audit record of each change and use.

Keys are versioned AES-256 and RSA-3072 keys, encrypted at rest. Unlocking is ``unlock.py``, the
files on disk and their anti-rollback generations ``keyfiles.py``, backups ``backup.py``, the
audit log ``audit.py`` (``audit_sync``: when its wrap and unwrap records reach the disk).

An unlocked keystore keeps its lock file, its audit log and what it read of its files open
between operations, each checked cheaply on every operation (``keyfiles.py``); call
:meth:`Keystore.close` (or use it as a context manager) to sync the audit log and release them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..durability import DEFAULT_SYNC, SyncMode
from ..errors import (
    AuditLogError,
    ConfigError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    KeystoreError,
    UnwrapError,
)
from ..format.header import encode_context
from ..kek import WrappedKey
from ..safe_files import FileLock, ensure_private_dir
from .audit import AuditLog, AuditReport
from .backup import check_backup_target, merge_backup, read_backup, write_backup
from .encoding import now
from .files import keystore_lock
from .keyfiles import VERSION_PATTERN, KeyFiles, check_name, find_version, key_document, recorded
from .unlock import STORE_FILE, StoreKeys, check_new_passphrase, new_kdf, new_store, unlock

__all__ = [
    "KEY_TYPES",
    "VERSION_PATTERN",
    "KeyInfo",
    "KeyType",
    "Keystore",
    "VersionInfo",
    "check_name",
]

KeyType = Literal["aes256", "rsa3072"]
KEY_TYPES: tuple[KeyType, ...] = ("aes256", "rsa3072")
AES_ALG = "AES-256-GCM"
RSA_ALG = "RSA-OAEP-SHA256"
_RSA_CACHE_SIZE = 64
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a key (no material)."""

    version: int
    state: str
    """``"active"``, or ``"destroyed"`` (its material erased)."""
    created: str
    destroyed: str | None = None
    """When the version was destroyed (None while it is active)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """Metadata about one key (no material)."""

    name: str
    type: KeyType
    enabled: bool
    current: int
    """The version new data keys are wrapped with."""
    created: str
    versions: tuple[VersionInfo, ...]
    uuid: str | None = None
    """The key's identity, fixed at creation (None for a key made before identities existed
    and not changed since)."""

    @property
    def uri(self) -> str:
        return f"local:{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uri": self.uri,
            "uuid": self.uuid,
            "type": self.type,
            "enabled": self.enabled,
            "current_version": self.current,
            "created": self.created,
            "versions": [
                {"version": v.version, "state": v.state, "created": v.created}
                for v in self.versions
            ],
        }


class Keystore:
    """An unlocked keystore directory. Open with :meth:`open` or make one with :meth:`create`."""

    def __init__(
        self,
        directory: Path,
        store_id: str,
        keys: StoreKeys,
        *,
        audit_sync: SyncMode = DEFAULT_SYNC,
        lock: FileLock | None = None,
    ) -> None:
        self.directory = directory
        self.id = store_id
        self._store_lock = keystore_lock(directory) if lock is None else lock
        self.audit = AuditLog(directory, keys.audit, sync=audit_sync, lock=self._store_lock)
        self._files = KeyFiles(directory, store_id, keys, self.audit)
        # Parsed RSA private keys, per (name, version, sealed material): parsing and checking a
        # 3072-bit key costs ~100 ms, an unwrap with a parsed one ~1 ms. Per unlocked keystore
        # only, never module-wide.
        self._rsa_cache: dict[tuple[str, int, str], rsa.RSAPrivateKey] = {}
        self._public_cache: dict[tuple[str, int, str], rsa.RSAPublicKey] = {}
        self._last_aad: tuple[str, Mapping[str, str], bytes] = ("", {}, b"")

    def __repr__(self) -> str:
        return f"Keystore({str(self.directory)!r}, audit_sync={self.audit_sync!r})"

    @property
    def audit_sync(self) -> SyncMode:
        """When wrap and unwrap audit records reach the disk (``"always"`` or ``"batch"``)."""
        return self.audit.sync

    def close(self) -> None:
        """Sync the audit records written so far and release the open files (idempotent; the
        keystore reopens them if it is used again)."""
        try:
            self.audit.close()
        finally:
            self._store_lock.close()

    def __enter__(self) -> Keystore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening ----------------------------------------------------------------------------

    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        return (Path(directory) / STORE_FILE).is_file()

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        passphrase: str,
        *,
        kdf: Mapping[str, Any] | None = None,
        audit_sync: SyncMode = DEFAULT_SYNC,
    ) -> Keystore:
        """Create a new, empty keystore at ``directory`` (which must not hold one).

        The passphrase must have at least ``MIN_PASSPHRASE_CHARS`` characters. ``audit_sync``:
        see :meth:`open`.
        """
        path = Path(directory).expanduser()
        check_new_passphrase(passphrase)
        params = new_kdf(kdf)
        ensure_private_dir(path)
        ensure_private_dir(path / "keys")
        lock = keystore_lock(path)
        with lock.exclusive:
            if cls.exists(path):
                raise KeystoreError(f"{path} already holds a keystore")
            fields, keys = new_store(passphrase, params, str(path))
            store = cls(path, fields["id"], keys, audit_sync=audit_sync, lock=lock)
            store._files.write_meta({**fields, "generation": 0, "keys": {}})
            store.audit.append("keystore.create", "local:*")
        return store

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        passphrase: str,
        *,
        audit_sync: SyncMode = DEFAULT_SYNC,
    ) -> Keystore:
        """Unlock an existing keystore; ``WrongPassphraseError`` if the passphrase is wrong.

        ``audit_sync``: ``"batch"`` (the default) writes each wrap and unwrap record before the
        operation returns and fsyncs them in groups (at most 50 ms or 1,000 records apart);
        ``"always"`` fsyncs each one before it returns (``kmsenvelope.durability``).
        """
        path = Path(directory).expanduser()
        store_id, keys = unlock(path, passphrase)
        store = cls(path, store_id, keys, audit_sync=audit_sync)
        store._files.read_meta()  # authenticated, and not older than the audit log
        return store

    @staticmethod
    def _info(doc: Mapping[str, Any]) -> KeyInfo:
        return KeyInfo(
            name=doc["name"],
            type=doc["type"],
            enabled=bool(doc["enabled"]),
            current=int(doc["current"]),
            created=doc["created"],
            versions=tuple(
                VersionInfo(int(v["version"]), v["state"], v["created"], v.get("destroyed"))
                for v in doc["versions"]
            ),
            uuid=doc.get("uuid"),
        )

    def _new_version(self, name: str, key_type: KeyType, version: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"version": version, "state": "active", "created": now()}
        if key_type == "aes256":
            raw = AESGCM.generate_key(256)
            entry["public_key"] = None
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
            raw = private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            entry["public_key"] = (
                private.public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                .decode("ascii")
            )
        entry["material"] = self._files.seal_material(name, version, raw)
        return entry

    def _lock(self, *, exclusive: bool = True) -> AbstractContextManager[None]:
        """The keystore's lock: exclusive for a change, shared for a read."""
        return self._store_lock.exclusive if exclusive else self._store_lock.shared

    # -- key management ---------------------------------------------------------------------

    def create_key(self, name: str, key_type: KeyType = "aes256") -> KeyInfo:
        """Create key ``name`` with version 1 and a new identity (uuid).

        ``ConfigError`` if the key exists already (choose another name, or rotate it).
        """
        check_name(name)
        if key_type not in KEY_TYPES:
            raise ConfigError(f"unknown key type {key_type!r} (choose {', '.join(KEY_TYPES)})")
        with self._lock():
            meta = self._files.read_meta()
            try:
                self._files.load(name, meta)
            except KeyNotFoundError:
                if recorded(meta, name):
                    raise  # its file was deleted: restore it, do not make another key
            else:
                raise ConfigError(
                    f"key local:{name} already exists (rotate it to get a new version, or "
                    "choose another name)"
                )
            doc = key_document(
                name,
                key_type,
                key_uuid=str(uuid.uuid4()),
                created=now(),
                enabled=True,
                current=1,
                versions=[self._new_version(name, key_type, 1)],
            )
            generation = self._files.commit(self._files.prepare(meta), [doc])
            self.audit.append(
                "key.create", f"local:{name}/1", detail={"type": key_type}, generation=generation
            )
            return self._info(doc)

    def list_keys(self) -> list[KeyInfo]:
        """Every key, sorted by name."""
        with self._lock(exclusive=False):
            meta = self._files.read_meta()
            return [self._info(self._files.load(n, meta)) for n in self._files.names(meta)]

    def get(self, name: str) -> KeyInfo:
        with self._lock(exclusive=False):
            return self._info(self._files.current_key(name, self._files.current_meta()))

    def rotate(self, name: str) -> KeyInfo:
        """Add a new version and make it current; old versions still unwrap."""
        with self._lock():
            meta = self._files.read_meta()
            doc = self._files.load(name, meta)
            version = max(int(v["version"]) for v in doc["versions"]) + 1
            doc["versions"].append(self._new_version(name, doc["type"], version))
            doc["current"] = version
            generation = self._files.commit(self._files.prepare(meta), [doc])
            self.audit.append("key.rotate", f"local:{name}/{version}", generation=generation)
            return self._info(doc)

    def set_enabled(self, name: str, enabled: bool) -> KeyInfo:
        """Disable (no wrap or unwrap) or re-enable a key."""
        with self._lock():
            meta = self._files.read_meta()
            doc = self._files.load(name, meta)
            doc["enabled"] = enabled
            generation = self._files.commit(self._files.prepare(meta), [doc])
            self.audit.append(
                "key.enable" if enabled else "key.disable", f"local:{name}", generation=generation
            )
            return self._info(doc)

    def destroy_check(self, name: str, version: int) -> VersionInfo:
        """What :meth:`destroy_version` would find, without changing anything.

        ``KeyNotFoundError`` for a missing version, ``KeystoreError`` for the current one;
        otherwise the version (``state == "destroyed"`` if it is destroyed already).
        """
        with self._lock(exclusive=False):
            doc = self._files.load(name)
        return _destroyable(doc, name, version)

    def destroy_version(self, name: str, version: int) -> KeyInfo:
        """Erase one version's material for good; what only it wrapped can no longer be read.

        A version destroyed already is left as it is (its recorded date is kept).
        """
        with self._lock():
            meta = self._files.read_meta()
            doc = self._files.load(name, meta)
            if _destroyable(doc, name, version).state == "destroyed":
                return self._info(doc)
            entry = find_version(doc, version)
            assert entry is not None  # checked by _destroyable
            entry["state"] = "destroyed"
            entry["material"] = None
            entry["destroyed"] = now()
            generation = self._files.commit(self._files.prepare(meta), [doc])
            self._forget_material(name)
            self.audit.append("key.destroy", f"local:{name}/{version}", generation=generation)
            return self._info(doc)

    def _forget_material(self, name: str) -> None:
        """Drop every opened key of ``name`` this keystore keeps (a version was destroyed)."""
        self._files.forget_all()
        for cache in (self._rsa_cache, self._public_cache):
            for cache_key in [k for k in cache if k[0] == name]:
                del cache[cache_key]

    # -- wrapping ---------------------------------------------------------------------------

    def _usable(self, doc: Mapping[str, Any], version: int) -> dict[str, Any]:
        name = doc["name"]
        if not doc["enabled"]:
            raise KeyDisabledError(
                f"local:{name} is disabled; enable it with 'kmsenvelope keys enable {name}'"
            )
        entry = find_version(doc, version)
        if entry is None:
            raise KeyNotFoundError(f"local:{name}/{version}: no such key version")
        if entry["state"] == "destroyed" or entry.get("material") is None:
            when = entry.get("destroyed", "an unknown date")
            raise KeyDestroyedError(
                f"local:{name}/{version}: key version was destroyed on {when}; data keys it "
                "wrapped cannot be recovered"
            )
        return entry

    @staticmethod
    def _aad(key_id: str, context: Mapping[str, str]) -> bytes:
        """What a wrapped key is bound to: the key version and the context (docs/format.md)."""
        return b"kmsenvelope-local/1\x00" + key_id.encode() + b"\x00" + encode_context(context)

    def _bound_aad(self, key_id: str, context: Mapping[str, str]) -> bytes:
        """:meth:`_aad`, the last one kept: an application tends to use one context a lot."""
        last_id, last_context, last_aad = self._last_aad
        if key_id == last_id and context == last_context:
            return last_aad
        aad = self._aad(key_id, context)
        self._last_aad = (key_id, dict(context), aad)
        return aad

    def wrap(
        self,
        name: str,
        version: int | None,
        dek: bytes,
        context: Mapping[str, str],
        *,
        peer: tuple[int, int] | None = None,
    ) -> WrappedKey:
        """Wrap ``dek`` with ``name`` at ``version`` (default: current) and audit it.

        ``peer``: the (uid, pid) of the process this wrap is done for (a daemon's client),
        recorded in the audit entry.
        """
        with self._lock():
            key_id = f"local:{name}" if version is None else f"local:{name}/{version}"
            try:
                doc = self._files.current_key(name, self._files.current_meta())
                ver = int(doc["current"]) if version is None else version
                key_id = f"local:{name}/{ver}"
                entry = self._usable(doc, ver)
                if doc["type"] == "aes256":
                    aead = self._files.aead(name, ver, entry["material"])
                    nonce = os.urandom(12)
                    ct = nonce + aead.encrypt(nonce, dek, self._bound_aad(key_id, context))
                    wrapped = WrappedKey("local", key_id, AES_ALG, ct)
                else:
                    public = self._public_key(name, ver, entry["public_key"])
                    wrapped = WrappedKey("local", key_id, RSA_ALG, public.encrypt(dek, _OAEP))
            except Exception as exc:
                self.audit.append(
                    "wrap", key_id, f"error: {type(exc).__name__}", context, peer=peer
                )
                raise
            self.audit.append("wrap", key_id, "ok", context, peer=peer)
            return wrapped

    def unwrap(
        self,
        name: str,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        *,
        peer: tuple[int, int] | None = None,
    ) -> bytes:
        """Unwrap a data key wrapped by any version of ``name``, and audit it (``peer``: see
        :meth:`wrap`)."""
        key_id = wrapped.key_id
        with self._lock():
            try:
                version = parse_version(key_id, name)
                doc = self._files.current_key(name, self._files.current_meta())
                entry = self._usable(doc, version)
                dek = self._unwrap_with(doc["type"], name, version, entry, wrapped, context)
            except Exception as exc:
                self.audit.append(
                    "unwrap", key_id, f"error: {type(exc).__name__}", context, peer=peer
                )
                raise
            self.audit.append("unwrap", key_id, "ok", context, peer=peer)
            return dek

    def _public_key(self, name: str, version: int, pem: str) -> rsa.RSAPublicKey:
        """The parsed RSA public key of ``name``/``version``, parsed once per keystore."""
        cache_key = (name, version, pem)
        public = self._public_cache.get(cache_key)
        if public is None:
            loaded = serialization.load_pem_public_key(pem.encode())
            assert isinstance(loaded, rsa.RSAPublicKey)
            public = loaded
            if len(self._public_cache) >= _RSA_CACHE_SIZE:
                self._public_cache.pop(next(iter(self._public_cache)))
            self._public_cache[cache_key] = public
        return public

    def _private_key(self, name: str, version: int, sealed: str) -> rsa.RSAPrivateKey:
        """The parsed RSA private key of ``name``/``version``, parsed once per keystore."""
        cache_key = (name, version, sealed)
        private = self._rsa_cache.get(cache_key)
        if private is None:
            raw = self._files.open_material(name, version, sealed, self._files.key_path(name))
            loaded = serialization.load_der_private_key(raw, password=None)
            assert isinstance(loaded, rsa.RSAPrivateKey)
            private = loaded
            if len(self._rsa_cache) >= _RSA_CACHE_SIZE:
                self._rsa_cache.pop(next(iter(self._rsa_cache)))
            self._rsa_cache[cache_key] = private
        return private

    def _unwrap_with(
        self,
        key_type: str,
        name: str,
        version: int,
        entry: Mapping[str, Any],
        wrapped: WrappedKey,
        context: Mapping[str, str],
    ) -> bytes:
        fail = UnwrapError(
            f"{wrapped.key_id}: wrapped key did not authenticate (tampered, or wrapped under "
            "another context)"
        )
        if key_type == "aes256":
            if wrapped.algorithm != AES_ALG:
                raise UnwrapError(f"{wrapped.key_id}: unexpected algorithm {wrapped.algorithm!r}")
            aead = self._files.aead(name, version, entry["material"])
            ct = wrapped.ciphertext
            try:
                return aead.decrypt(ct[:12], ct[12:], self._bound_aad(wrapped.key_id, context))
            except (InvalidTag, ValueError):
                raise fail from None
        if wrapped.algorithm != RSA_ALG:
            raise UnwrapError(f"{wrapped.key_id}: unexpected algorithm {wrapped.algorithm!r}")
        private = self._private_key(name, version, entry["material"])
        try:
            return private.decrypt(wrapped.ciphertext, _OAEP)
        except ValueError:
            raise fail from None

    # -- audit ------------------------------------------------------------------------------

    def verify_audit(self, anchor: str | None = None) -> AuditReport:
        """Verify the audit log (and ``anchor``, see ``AuditLog.verify``), and that the key
        files are not older than the log: every change records its generation in the log, so
        keystore.json and keys/ rolled back together while the log was not are detected (by
        every operation from the head; here also against every entry of the chain)."""
        report = self.audit.verify(anchor)
        with self._lock(exclusive=False):
            meta = self._files.read_meta()
        have = int(meta.get("generation", 0))
        if have < report.generation:
            raise AuditLogError(
                f"{self._files.meta_path} is at generation {have} but the audit log records "
                f"generation {report.generation}: the keystore's files were rolled back to an "
                "older copy"
            )
        return report

    # -- backup and restore -----------------------------------------------------------------

    def backup(self, target: str | os.PathLike[str], passphrase: str) -> int:
        """Write every key (all versions) to an encrypted backup file; return the key count.

        ``target`` is replaced atomically only if it is a regular file or absent; a symbolic
        link has the file it names replaced; a device, FIFO, socket or directory is refused
        (``ConfigError``) before any work is done.
        """
        check_backup_target(target, passphrase)  # fail before the KDF runs
        with self._lock():
            count, _ = write_backup(self._files, self._files.read_meta(), target, passphrase)
            self.audit.append("keystore.backup", "local:*", detail={"keys": count})
            return count

    def backup_bytes(self, passphrase: str, *, peer: tuple[int, int] | None = None) -> bytes:
        """The encrypted backup of every key, in memory only (for the HSM daemon's admin
        clients: nothing is written anywhere on the daemon's side)."""
        if not passphrase:
            raise KeystoreError("refusing to write a backup with an empty passphrase")
        with self._lock():
            count, data = write_backup(self._files, self._files.read_meta(), None, passphrase)
            detail: dict[str, Any] = {"keys": count}
            if peer is not None:
                detail.update(peer_uid=peer[0], peer_pid=peer[1])
            self.audit.append("keystore.backup", "local:*", detail=detail)
            return data

    def restore(self, source: str | os.PathLike[str], passphrase: str) -> list[str]:
        """Merge keys from a backup; return the names restored.

        Keys or versions missing here are added; identical ones are kept. Nothing is written
        if a version exists with different material, or a key of the same name here is
        another key (a different identity; for keys made before identities existed: no
        version with material on both sides to compare).
        """
        data = read_backup(source, passphrase)
        with self._lock():
            meta = self._files.read_meta()
            names, changed = merge_backup(self._files, meta, data)
            generation = self._files.commit(self._files.prepare(meta), changed) if changed else None
            self.audit.append(
                "keystore.restore", "local:*", detail={"keys": names}, generation=generation
            )
            return names


def _destroyable(doc: Mapping[str, Any], name: str, version: int) -> VersionInfo:
    entry = find_version(doc, version)
    if entry is None:
        raise KeyNotFoundError(f"local:{name}/{version}: no such key version")
    if entry["state"] != "destroyed" and int(doc["current"]) == version:
        raise KeystoreError(
            f"local:{name}/{version} is the current version; rotate the key before destroying it"
        )
    return VersionInfo(version, entry["state"], entry["created"], entry.get("destroyed"))


def parse_version(key_id: str, name: str) -> int:
    """The version in ``local:NAME/VERSION`` (``UnwrapError`` if it names another key)."""
    prefix = f"local:{name}/"
    if not key_id.startswith(prefix) or not VERSION_PATTERN.fullmatch(key_id[len(prefix) :]):
        raise UnwrapError(f"{key_id}: not a version of local:{name}")
    return int(key_id[len(prefix) :])
