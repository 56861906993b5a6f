"""The local software HSM's keystore: versioned AES-256 and RSA-3072 keys, encrypted at rest.

Layout of a keystore directory (mode 0700, every file 0600, every write atomic)::

    keystore.json    format marker, keystore id, Argon2id parameters and salt, passphrase check,
                     and (format 2) the keystore *generation* and, per key, the generation and
                     MAC of its current key file -- all under an HMAC
    keys/NAME.json   one key: identity (uuid), type, enabled flag, current version, versions
                     (material encrypted with AES-256-GCM under a key derived from the
                     passphrase), the generation that wrote it, and an HMAC over the whole file
    audit.log        hash-chained audit entries (see ``audit.py``); audit.head: the chain's end
    .lock            flock target serializing changes across processes

Anti-rollback: every change writes its key files with generation G+1, then keystore.json with
generation G+1 and the new files' MACs. A key file is accepted only if keystore.json records its
MAC, or (a change interrupted between the two writes) its generation is exactly G+1; an older,
validly MAC'd copy replayed into ``keys/`` is refused. Keystores of format 1 (no generations)
stay readable and are upgraded by the first change. keystore.json and the key files rolled back
together are refused too, as long as the audit log was not: each change records its generation
in the log and its MAC'd head, and a keystore.json whose generation is below the log's is
refused when the keystore is opened and on every operation. Replacing *every* file at once, the
log included, cannot be seen from inside: an audit anchor kept elsewhere proves the log itself
was not rolled back (``audit.py``).

Keys are derived from the passphrase once per process (Argon2id, memory-hard) and cached only
as derived keys, never as the passphrase.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import (
    AuditLogError,
    ConfigError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    KeystoreCorruptError,
    KeystoreError,
    UnwrapError,
    WrongPassphraseError,
)
from ..header import encode_context
from ..kdf import hkdf_sha256
from ..kek import WrappedKey
from .audit import AuditLog, AuditReport
from .derive import KDF_CEILING, OPEN_CEILING, StoreKeys, check_kdf, derive_root
from .files import atomic_write, ensure_private_dir, locked, read_regular, replaceable_target
from .generations import (
    LEGACY_STORE_FORMAT,
    STORE_FORMAT,
    check_aad,
    check_current,
    recorded,
)

__all__ = ["KeyInfo", "KeyType", "Keystore", "VersionInfo"]

KeyType = Literal["aes256", "rsa3072"]
KEY_TYPES: tuple[KeyType, ...] = ("aes256", "rsa3072")
KEY_FORMAT = "kmsenvelope-key/1"
BACKUP_FORMAT = "kmsenvelope-keystore-backup/1"
AES_ALG = "AES-256-GCM"
RSA_ALG = "RSA-OAEP-SHA256"
_CHECK = b"kmsenvelope keystore passphrase check"
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,9}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
DEFAULT_KDF: dict[str, Any] = {"name": "argon2id", "iterations": 3, "memory_kib": 65536, "lanes": 4}
MIN_PASSPHRASE_CHARS = 8


_RSA_CACHE_SIZE = 64
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (ValueError, TypeError):
        raise KeystoreCorruptError(f"{what}: invalid base64") from None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def check_name(name: str) -> str:
    """Validate a key name (letters, digits, ``_ . -``; at most 128 characters)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid key name {name!r}: use 1-128 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name


# Derived keys cached per (directory, keystore id, salt, keyed digest of the passphrase).
_PROCESS_SECRET = secrets.token_bytes(32)
_KEY_CACHE: dict[tuple[str, str, str, bytes], StoreKeys] = {}
_KEY_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a key (no material)."""

    version: int
    state: str  # "active" or "destroyed"
    created: str
    destroyed: str | None = None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """Metadata about one key (no material)."""

    name: str
    type: KeyType
    enabled: bool
    current: int
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

    def __init__(self, directory: Path, store_id: str, keys: StoreKeys) -> None:
        self.directory = directory
        self.id = store_id
        self._keys = keys
        self.audit = AuditLog(directory, keys.audit)
        # Parsed RSA private keys, per (name, version, sealed material): parsing and checking a
        # 3072-bit key costs ~100 ms, an unwrap with a parsed one ~1 ms. Per unlocked keystore
        # only, never module-wide.
        self._rsa_cache: dict[tuple[str, int, str], rsa.RSAPrivateKey] = {}

    def __repr__(self) -> str:
        return f"Keystore({str(self.directory)!r})"

    # -- opening ----------------------------------------------------------------------------

    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        return (Path(directory) / "keystore.json").is_file()

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        passphrase: str,
        *,
        kdf: Mapping[str, Any] | None = None,
    ) -> Keystore:
        """Create a new, empty keystore at ``directory`` (which must not hold one).

        The passphrase must have at least ``MIN_PASSPHRASE_CHARS`` characters.
        """
        path = Path(directory).expanduser()
        if not passphrase:
            raise KeystoreError("refusing to create a keystore with an empty passphrase")
        if len(passphrase) < MIN_PASSPHRASE_CHARS:
            raise KeystoreError(
                f"a new keystore's passphrase must have at least {MIN_PASSPHRASE_CHARS} characters"
            )
        params = dict(kdf or DEFAULT_KDF)
        check_kdf(params, KDF_CEILING, "new keystore")
        ensure_private_dir(path)
        ensure_private_dir(path / "keys")
        with locked(path / ".lock"):
            if cls.exists(path):
                raise KeystoreError(f"{path} already holds a keystore")
            salt = os.urandom(16)
            params["salt"] = _b64(salt)
            keys = StoreKeys.from_root(
                derive_root(passphrase, params, salt, KDF_CEILING, str(path))
            )
            store_id = secrets.token_hex(16)
            store = cls(path, store_id, keys)
            doc: dict[str, Any] = {
                "format": STORE_FORMAT,
                "id": store_id,
                "created": _now(),
                "kdf": params,
                "check": _b64(_make_check(keys, store_id, STORE_FORMAT)),
                "generation": 0,
                "keys": {},
            }
            store._write_meta(doc)
            store.audit.append("keystore.create", "local:*")
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike[str], passphrase: str) -> Keystore:
        """Unlock an existing keystore; ``WrongPassphraseError`` if the passphrase is wrong."""
        path = Path(directory).expanduser()
        meta_path = path / "keystore.json"
        try:
            raw = read_regular(meta_path)
        except FileNotFoundError:
            raise KeystoreError(
                f"no keystore at {path} (create one with 'kmsenvelope keys create NAME', "
                "or point --keystore / KMSENVELOPE_KEYSTORE at an existing one)"
            ) from None
        except PermissionError:
            raise KeystoreError(f"cannot read {meta_path}: permission denied") from None
        try:
            doc = json.loads(raw)
            if doc.get("format") not in (STORE_FORMAT, LEGACY_STORE_FORMAT):
                raise ValueError
            store_id = str(doc["id"])
            kdf = dict(doc["kdf"])
            salt = _unb64(kdf["salt"], str(meta_path))
            check = _unb64(doc["check"], str(meta_path))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeystoreCorruptError(f"{meta_path}: not a valid keystore file") from None
        digest = hmac.new(_PROCESS_SECRET, passphrase.encode("utf-8"), sha256).digest()
        cache_key = (str(path.resolve()), store_id, str(kdf["salt"]), digest)
        # One derivation at a time: concurrent Argon2id calls would multiply the memory cost
        # (and OpenSSL's Argon2 has been seen to stall when run from several threads at once).
        with _KEY_CACHE_LOCK:
            keys = _KEY_CACHE.get(cache_key)
            if keys is None:
                keys = StoreKeys.from_root(
                    derive_root(passphrase, kdf, salt, OPEN_CEILING, str(meta_path))
                )
                aad = check_aad(store_id, str(doc["format"]))
                try:
                    plain = AESGCM(keys.enc).decrypt(check[:12], check[12:], aad)
                except (InvalidTag, ValueError):
                    raise WrongPassphraseError(_wrong_passphrase(path, passphrase)) from None
                if not hmac.compare_digest(plain, _CHECK):
                    raise KeystoreCorruptError(f"{meta_path}: passphrase check value is wrong")
                _KEY_CACHE[cache_key] = keys
        store = cls(path, store_id, keys)
        store._read_meta()  # authenticated, and not older than the audit log
        return store

    # -- keystore.json: the generation and the record of every key file ---------------------

    @property
    def _meta_path(self) -> Path:
        return self.directory / "keystore.json"

    def _verify_meta(self, doc: Mapping[str, Any]) -> None:
        """Check keystore.json's MAC (format 2; format 1 has none)."""
        if doc.get("format") == LEGACY_STORE_FORMAT:
            return
        stored = doc.get("mac")
        if (
            not isinstance(stored, str)
            or not hmac.compare_digest(stored, self._mac(doc))
            or doc.get("id") != self.id
            or not isinstance(doc.get("generation"), int)
            or not isinstance(doc.get("keys"), dict)
        ):
            raise KeystoreCorruptError(
                f"{self._meta_path}: failed its integrity check (edited or corrupted)"
            )

    def _read_meta(self) -> dict[str, Any]:
        """keystore.json, authenticated and not older than the audit log.

        The log's generation is read *before* keystore.json: a change writes keystore.json
        before its audit record, so whatever log state is read, the keystore.json read after
        it is at least as new, even without the lock (``open``) while another process commits.
        """
        logged = self.audit.generation()
        try:
            doc = json.loads(read_regular(self._meta_path))
            if not isinstance(doc, dict) or doc.get("format") not in (
                STORE_FORMAT,
                LEGACY_STORE_FORMAT,
            ):
                raise ValueError
        except FileNotFoundError:
            raise KeystoreCorruptError(f"{self._meta_path} is missing") from None
        except ValueError:
            raise KeystoreCorruptError(f"{self._meta_path}: not a valid keystore file") from None
        self._verify_meta(doc)
        have = int(doc.get("generation", 0))  # format 1: none, as before any generation
        if have < logged:
            raise KeystoreCorruptError(
                f"{self._meta_path} is older than the audit log: restored from an older copy? "
                f"(it is at generation {have}, the log records generation {logged}); put back "
                "the current keystore.json and key files"
            )
        return doc

    def _write_meta(self, doc: dict[str, Any]) -> None:
        doc["mac"] = self._mac(doc)
        atomic_write(self._meta_path, json.dumps(doc, indent=2).encode())

    def _prepare(self, meta: dict[str, Any]) -> dict[str, Any]:
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
            self._write_meta(meta)
        return meta

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every key file with a valid MAC (others are skipped here; loading reports them)."""
        for path in sorted((self.directory / "keys").glob("*.json")):
            try:
                doc = json.loads(read_regular(path))
            except (OSError, ValueError, KeystoreError):
                continue
            if (
                isinstance(doc, dict)
                and doc.get("name") == path.stem
                and isinstance(doc.get("mac"), str)
                and hmac.compare_digest(doc["mac"], self._mac(doc))
            ):
                yield path.stem, doc

    def _upgrade(self, legacy: Mapping[str, Any]) -> dict[str, Any]:
        """Format 1 -> 2: record every current key file (generation 0) under keystore.json's
        MAC, and bind the new format into the passphrase check."""
        records = {}
        for name in self._names(legacy):
            doc = self._load(name, legacy)
            records[name] = {"generation": 0, "mac": doc["mac"]}
        meta: dict[str, Any] = {
            **{k: legacy[k] for k in ("id", "created", "kdf")},
            "format": STORE_FORMAT,
            "check": _b64(_make_check(self._keys, self.id, STORE_FORMAT)),
            "generation": 0,
            "keys": records,
        }
        self._write_meta(meta)
        return meta

    def _commit(self, meta: dict[str, Any], docs: list[dict[str, Any]]) -> int:
        """Write ``docs`` as generation G+1, then keystore.json; return the new generation,
        which the caller then records in the audit log.

        The order is what keeps a crash from locking the user out. Key files first: a crash
        before keystore.json leaves them one generation ahead, adopted by the next change
        (``_prepare``). keystore.json before the audit record: a crash between the two leaves
        keystore.json ahead of the log, which is accepted (only *behind* the log is refused),
        and the next change records a higher generation; the change itself goes unaudited.
        The opposite order would leave the log ahead of a keystore.json that was never rolled
        back, and every later open would refuse it.
        """
        generation = int(meta["generation"]) + 1
        for doc in docs:
            doc["generation"] = generation
            doc.setdefault("uuid", str(uuid.uuid4()))
            doc["mac"] = self._mac(doc)
            atomic_write(self._key_path(doc["name"]), json.dumps(doc, indent=2).encode())
        for doc in docs:
            meta["keys"][doc["name"]] = {"generation": generation, "mac": doc["mac"]}
        meta["generation"] = generation
        self._write_meta(meta)
        return generation

    def _names(self, meta: Mapping[str, Any]) -> list[str]:
        """Every key name: recorded in keystore.json or present in keys/."""
        names = {p.stem for p in (self.directory / "keys").glob("*.json")}
        if meta["format"] == STORE_FORMAT:
            names.update(meta["keys"])
        return sorted(names)

    # -- key files --------------------------------------------------------------------------

    def _key_path(self, name: str) -> Path:
        return self.directory / "keys" / f"{check_name(name)}.json"

    def _material_aad(self, name: str, version: int) -> bytes:
        return f"{KEY_FORMAT}|{self.id}|{name}|{version}".encode()

    def _seal_material(self, name: str, version: int, raw: bytes) -> str:
        nonce = os.urandom(12)
        return _b64(
            nonce + AESGCM(self._keys.enc).encrypt(nonce, raw, self._material_aad(name, version))
        )

    def _open_material(self, name: str, version: int, sealed: str, path: Path) -> bytes:
        blob = _unb64(sealed, str(path))
        try:
            return AESGCM(self._keys.enc).decrypt(
                blob[:12], blob[12:], self._material_aad(name, version)
            )
        except (InvalidTag, ValueError):
            raise KeystoreCorruptError(
                f"{path}: key material for version {version} does not decrypt "
                "(corrupted, or copied from another keystore)"
            ) from None

    def _mac(self, doc: Mapping[str, Any]) -> str:
        body = {k: v for k, v in doc.items() if k != "mac"}
        return hmac.new(self._keys.mac, _canonical(body), sha256).hexdigest()

    def _load(self, name: str, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Key ``name``'s file, authenticated and checked to be the current one."""
        meta = self._read_meta() if meta is None else meta
        path = self._key_path(name)
        try:
            raw = read_regular(path)
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
        if not isinstance(stored, str) or not hmac.compare_digest(stored, self._mac(doc)):
            raise KeystoreCorruptError(
                f"{path}: key file failed its integrity check (edited or corrupted); "
                "restore it from a backup"
            )
        if doc.get("name") != name:
            raise KeystoreCorruptError(f"{path}: key file holds key {doc.get('name')!r}")
        check_current(name, doc, meta, path, self._meta_path)
        return doc

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
        entry: dict[str, Any] = {"version": version, "state": "active", "created": _now()}
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
        entry["material"] = self._seal_material(name, version, raw)
        return entry

    def _lock(self) -> Any:
        return locked(self.directory / ".lock")

    # -- key management ---------------------------------------------------------------------

    def create_key(self, name: str, key_type: KeyType = "aes256") -> KeyInfo:
        """Create key ``name`` with version 1 and a new identity (uuid).

        ``ConfigError`` if the key exists already (choose another name, or rotate it).
        """
        check_name(name)
        if key_type not in KEY_TYPES:
            raise ConfigError(f"unknown key type {key_type!r} (choose {', '.join(KEY_TYPES)})")
        with self._lock():
            meta = self._read_meta()
            try:
                self._load(name, meta)
            except KeyNotFoundError:
                if recorded(meta, name):
                    raise  # its file was deleted: restore it, do not make another key
            else:
                raise ConfigError(
                    f"key local:{name} already exists (rotate it to get a new version, or "
                    "choose another name)"
                )
            doc: dict[str, Any] = {
                "format": KEY_FORMAT,
                "name": name,
                "uuid": str(uuid.uuid4()),
                "type": key_type,
                "created": _now(),
                "enabled": True,
                "current": 1,
                "versions": [self._new_version(name, key_type, 1)],
            }
            generation = self._commit(self._prepare(meta), [doc])
            self.audit.append(
                "key.create", f"local:{name}/1", detail={"type": key_type}, generation=generation
            )
            return self._info(doc)

    def list_keys(self) -> list[KeyInfo]:
        """Every key, sorted by name."""
        with locked(self.directory / ".lock", exclusive=False):
            meta = self._read_meta()
            return [self._info(self._load(n, meta)) for n in self._names(meta)]

    def get(self, name: str) -> KeyInfo:
        with locked(self.directory / ".lock", exclusive=False):
            return self._info(self._load(name))

    def rotate(self, name: str) -> KeyInfo:
        """Add a new version and make it current; old versions still unwrap."""
        with self._lock():
            meta = self._read_meta()
            doc = self._load(name, meta)
            version = max(int(v["version"]) for v in doc["versions"]) + 1
            doc["versions"].append(self._new_version(name, doc["type"], version))
            doc["current"] = version
            generation = self._commit(self._prepare(meta), [doc])
            self.audit.append("key.rotate", f"local:{name}/{version}", generation=generation)
            return self._info(doc)

    def set_enabled(self, name: str, enabled: bool) -> KeyInfo:
        """Disable (no wrap or unwrap) or re-enable a key."""
        with self._lock():
            meta = self._read_meta()
            doc = self._load(name, meta)
            doc["enabled"] = enabled
            generation = self._commit(self._prepare(meta), [doc])
            self.audit.append(
                "key.enable" if enabled else "key.disable", f"local:{name}", generation=generation
            )
            return self._info(doc)

    def destroy_check(self, name: str, version: int) -> VersionInfo:
        """What :meth:`destroy_version` would find, without changing anything.

        ``KeyNotFoundError`` for a missing version, ``KeystoreError`` for the current one;
        otherwise the version (``state == "destroyed"`` if it is destroyed already).
        """
        with locked(self.directory / ".lock", exclusive=False):
            doc = self._load(name)
        return _destroyable(doc, name, version)

    def destroy_version(self, name: str, version: int) -> KeyInfo:
        """Erase one version's material for good; what only it wrapped can no longer be read.

        A version destroyed already is left as it is (its recorded date is kept).
        """
        with self._lock():
            meta = self._read_meta()
            doc = self._load(name, meta)
            if _destroyable(doc, name, version).state == "destroyed":
                return self._info(doc)
            entry = _find_version(doc, version)
            assert entry is not None  # checked by _destroyable
            entry["state"] = "destroyed"
            entry["material"] = None
            entry["destroyed"] = _now()
            generation = self._commit(self._prepare(meta), [doc])
            self.audit.append("key.destroy", f"local:{name}/{version}", generation=generation)
            return self._info(doc)

    # -- wrapping ---------------------------------------------------------------------------

    def _usable(self, doc: Mapping[str, Any], version: int) -> dict[str, Any]:
        name = doc["name"]
        if not doc["enabled"]:
            raise KeyDisabledError(
                f"local:{name} is disabled; enable it with 'kmsenvelope keys enable {name}'"
            )
        entry = _find_version(doc, version)
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
        return b"kmsenvelope-local/1\x00" + key_id.encode() + b"\x00" + encode_context(context)

    def wrap(
        self, name: str, version: int | None, dek: bytes, context: Mapping[str, str]
    ) -> WrappedKey:
        """Wrap ``dek`` with ``name`` at ``version`` (default: current) and audit it."""
        with self._lock():
            key_id = f"local:{name}" if version is None else f"local:{name}/{version}"
            try:
                doc = self._load(name)
                ver = int(doc["current"]) if version is None else version
                key_id = f"local:{name}/{ver}"
                entry = self._usable(doc, ver)
                path = self._key_path(name)
                if doc["type"] == "aes256":
                    raw = self._open_material(name, ver, entry["material"], path)
                    nonce = os.urandom(12)
                    ct = nonce + AESGCM(raw).encrypt(nonce, dek, self._aad(key_id, context))
                    wrapped = WrappedKey("local", key_id, AES_ALG, ct)
                else:
                    public = serialization.load_pem_public_key(entry["public_key"].encode())
                    assert isinstance(public, rsa.RSAPublicKey)
                    wrapped = WrappedKey("local", key_id, RSA_ALG, public.encrypt(dek, _OAEP))
            except Exception as exc:
                self.audit.append("wrap", key_id, f"error: {type(exc).__name__}", context)
                raise
            self.audit.append("wrap", key_id, "ok", context)
            return wrapped

    def unwrap(self, name: str, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Unwrap a data key wrapped by any version of ``name``, and audit it."""
        key_id = wrapped.key_id
        with self._lock():
            try:
                version = parse_version(key_id, name)
                doc = self._load(name)
                entry = self._usable(doc, version)
                dek = self._unwrap_with(doc["type"], name, version, entry, wrapped, context)
            except Exception as exc:
                self.audit.append("unwrap", key_id, f"error: {type(exc).__name__}", context)
                raise
            self.audit.append("unwrap", key_id, "ok", context)
            return dek

    def _private_key(self, name: str, version: int, sealed: str) -> rsa.RSAPrivateKey:
        """The parsed RSA private key of ``name``/``version``, parsed once per keystore."""
        cache_key = (name, version, sealed)
        private = self._rsa_cache.get(cache_key)
        if private is None:
            raw = self._open_material(name, version, sealed, self._key_path(name))
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
            raw = self._open_material(name, version, entry["material"], self._key_path(name))
            ct = wrapped.ciphertext
            try:
                return AESGCM(raw).decrypt(ct[:12], ct[12:], self._aad(wrapped.key_id, context))
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
        with locked(self.directory / ".lock", exclusive=False):
            meta = self._read_meta()
        have = int(meta.get("generation", 0))
        if have < report.generation:
            raise AuditLogError(
                f"{self._meta_path} is at generation {have} but the audit log records "
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
        if not passphrase:
            raise KeystoreError("refusing to write a backup with an empty passphrase")
        replaceable_target(Path(target).expanduser(), "backup")  # fail before the KDF runs
        with self._lock():
            meta = self._read_meta()
            keys = []
            for name in self._names(meta):
                doc = self._load(name, meta)
                path = self._key_path(name)
                versions = []
                for v in doc["versions"]:
                    item = {k: v[k] for k in v if k != "material"}
                    if v.get("material") is not None:
                        raw = self._open_material(
                            doc["name"], int(v["version"]), v["material"], path
                        )
                        item["raw"] = _b64(raw)
                    versions.append(item)
                keys.append(
                    {
                        **{k: doc[k] for k in doc if k not in ("versions", "mac", "generation")},
                        "versions": versions,
                    }
                )
            plain = json.dumps({"keystore_id": self.id, "created": _now(), "keys": keys}).encode()
            params = dict(DEFAULT_KDF)
            salt = os.urandom(16)
            params["salt"] = _b64(salt)
            root = derive_root(passphrase, params, salt, KDF_CEILING, "backup")
            bkey = hkdf_sha256(root, b"", b"kmsenvelope backup v1", 32)
            nonce = os.urandom(12)
            ct = AESGCM(bkey).encrypt(nonce, plain, BACKUP_FORMAT.encode())
            out = {
                "format": BACKUP_FORMAT,
                "kdf": params,
                "nonce": _b64(nonce),
                "ciphertext": _b64(ct),
            }
            target_path = replaceable_target(Path(target).expanduser(), "backup")
            atomic_write(target_path, json.dumps(out, indent=2).encode())
            self.audit.append("keystore.backup", "local:*", detail={"keys": len(keys)})
            return len(keys)

    def restore(self, source: str | os.PathLike[str], passphrase: str) -> list[str]:
        """Merge keys from a backup; return the names restored.

        Keys or versions missing here are added; identical ones are kept. Nothing is written
        if a version exists with different material, or a key of the same name here is
        another key (a different identity; for keys made before identities existed: no
        version with material on both sides to compare).
        """
        data = read_backup(source, passphrase)
        with self._lock():
            meta = self._read_meta()
            planned: list[dict[str, Any]] = []
            changed: list[dict[str, Any]] = []
            for key in data["keys"]:
                name = check_name(key["name"])
                try:
                    existing = self._load(name, meta)
                except KeyNotFoundError:
                    existing = None
                before = None if existing is None else _canonical(existing)
                doc = self._merge(name, key, existing)
                planned.append(doc)
                if before is None or _canonical(doc) != before:
                    changed.append(doc)
            generation = self._commit(self._prepare(meta), changed) if changed else None
            names = [d["name"] for d in planned]
            self.audit.append(
                "keystore.restore", "local:*", detail={"keys": names}, generation=generation
            )
            return names

    def _merge(
        self, name: str, key: Mapping[str, Any], existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        if existing is None:
            doc: dict[str, Any] = {
                "format": KEY_FORMAT,
                "name": name,
                "uuid": str(key.get("uuid") or uuid.uuid4()),
                "type": key["type"],
                "created": key["created"],
                "enabled": bool(key["enabled"]),
                "current": int(key["current"]),
                "versions": [],
            }
        else:
            doc = existing
        if doc["type"] != key["type"]:
            raise KeystoreError(
                f"restore conflict: local:{name} has type {doc['type']} here "
                f"but {key['type']} in the backup"
            )
        path = self._key_path(name)
        compared = False
        for v in key["versions"]:
            number = int(v["version"])
            entry = _find_version(doc, number)
            raw = _unb64(v["raw"], "backup") if "raw" in v else None
            if entry is None:
                new = {k: v[k] for k in v if k != "raw"}
                new["material"] = (
                    self._seal_material(name, number, raw) if raw is not None else None
                )
                doc["versions"].append(new)
            elif raw is not None and entry.get("material") is not None:
                current = self._open_material(name, number, entry["material"], path)
                if not hmac.compare_digest(current, raw):
                    raise KeystoreError(
                        f"restore conflict: local:{name}/{number} exists here with different "
                        "key material; nothing was restored"
                    )
                compared = True
        mine, theirs = doc.get("uuid"), key.get("uuid")
        if existing is not None and mine and theirs and mine != theirs:
            raise KeystoreError(
                f"restore conflict: local:{name} in the backup is another key than local:{name} "
                "here (same name, different identity: another keystore's key?); nothing was "
                "restored (restore that backup into a keystore of its own)"
            )
        if existing is not None and not (mine and theirs):
            if not compared:
                raise KeystoreError(
                    f"restore conflict: cannot tell whether local:{name} in the backup is the "
                    f"key local:{name} here (one of them predates key identities, and no version "
                    "has key material on both sides to compare); nothing was restored"
                )
            if theirs and not mine:
                doc["uuid"] = theirs
        doc["versions"].sort(key=lambda e: int(e["version"]))
        doc["current"] = max(int(doc["current"]), int(key["current"]))
        return doc


def _make_check(keys: StoreKeys, store_id: str, store_format: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(keys.enc).encrypt(nonce, _CHECK, check_aad(store_id, store_format))


def _wrong_passphrase(path: Path, passphrase: str) -> str:
    """The wrong-passphrase message; it names the environment variable only when the
    passphrase came from it."""
    from .provider import PASSPHRASE_ENV

    from_env = os.environ.get(PASSPHRASE_ENV) == passphrase
    hint = f" (it came from {PASSPHRASE_ENV})" if from_env else ""
    return f"the passphrase does not open the keystore at {path}{hint}"


def _destroyable(doc: Mapping[str, Any], name: str, version: int) -> VersionInfo:
    entry = _find_version(doc, version)
    if entry is None:
        raise KeyNotFoundError(f"local:{name}/{version}: no such key version")
    if entry["state"] != "destroyed" and int(doc["current"]) == version:
        raise KeystoreError(
            f"local:{name}/{version} is the current version; rotate the key before destroying it"
        )
    return VersionInfo(version, entry["state"], entry["created"], entry.get("destroyed"))


def read_backup(source: str | os.PathLike[str], passphrase: str) -> dict[str, Any]:
    """Decrypt a backup file; ``WrongPassphraseError`` if the passphrase does not open it."""
    path = Path(source).expanduser()
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != BACKUP_FORMAT:
            raise ValueError
        params = dict(doc["kdf"])
        salt = _unb64(params["salt"], str(path))
        nonce = _unb64(doc["nonce"], str(path))
        ct = _unb64(doc["ciphertext"], str(path))
    except FileNotFoundError:
        raise KeystoreError(f"backup file {path} does not exist") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KeystoreCorruptError(f"{path}: not a kmsenvelope keystore backup") from None
    # The ceiling is checked before Argon2id runs: a crafted backup asking for gigabytes is
    # refused at once instead of holding the memory for minutes.
    root = derive_root(passphrase, params, salt, KDF_CEILING, str(path))
    bkey = hkdf_sha256(root, b"", b"kmsenvelope backup v1", 32)
    try:
        plain = AESGCM(bkey).decrypt(nonce, ct, BACKUP_FORMAT.encode())
    except (InvalidTag, ValueError):
        raise WrongPassphraseError(
            f"{path}: the passphrase does not open this backup (or the file was modified)"
        ) from None
    data = json.loads(plain)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeystoreCorruptError(f"{path}: backup content is invalid")
    return data


def _find_version(doc: Mapping[str, Any], version: int) -> dict[str, Any] | None:
    for v in doc["versions"]:
        if int(v["version"]) == version:
            entry: dict[str, Any] = v  # the live entry, so callers can update it in place
            return entry
    return None


def parse_version(key_id: str, name: str) -> int:
    """The version in ``local:NAME/VERSION`` (``UnwrapError`` if it names another key)."""
    prefix = f"local:{name}/"
    if not key_id.startswith(prefix) or not VERSION_PATTERN.fullmatch(key_id[len(prefix) :]):
        raise UnwrapError(f"{key_id}: not a version of local:{name}")
    return int(key_id[len(prefix) :])
