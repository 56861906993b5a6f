"""The local software HSM's keystore: versioned AES-256 and RSA-3072 keys, encrypted at rest.

Layout of a keystore directory (mode 0700, every file 0600, every write atomic)::

    keystore.json    format marker, keystore id, Argon2id parameters and salt, passphrase check
    keys/NAME.json   one key: type, enabled flag, current version, versions (material encrypted
                     with AES-256-GCM under a key derived from the passphrase), and an HMAC
                     over the whole file so edits are detected
    audit.log        hash-chained audit entries (see ``audit.py``); audit.head: the chain's end
    .lock            flock target serializing changes across processes

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
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..errors import (
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
from .audit import AuditLog
from .files import atomic_write, ensure_private_dir, locked

__all__ = ["KeyInfo", "KeyType", "Keystore", "VersionInfo"]

KeyType = Literal["aes256", "rsa3072"]
KEY_TYPES: tuple[KeyType, ...] = ("aes256", "rsa3072")
STORE_FORMAT = "kmsenvelope-keystore/1"
KEY_FORMAT = "kmsenvelope-key/1"
BACKUP_FORMAT = "kmsenvelope-keystore-backup/1"
AES_ALG = "AES-256-GCM"
RSA_ALG = "RSA-OAEP-SHA256"
_CHECK = b"kmsenvelope keystore passphrase check"
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,9}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
DEFAULT_KDF: dict[str, Any] = {"name": "argon2id", "iterations": 3, "memory_kib": 65536, "lanes": 4}
# Upper bounds on parameters read from keystore.json or a backup: a crafted file must not be
# able to make an unlock take minutes or gigabytes.
_MAX_KDF_MEMORY_KIB = 4 * 1024 * 1024
_MAX_KDF_ITERATIONS = 64
_MAX_KDF_LANES = 64
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


def _derive_root(passphrase: str, kdf: Mapping[str, Any], salt: bytes) -> bytes:
    if kdf.get("name") != "argon2id":
        raise KeystoreCorruptError(f"unsupported keystore KDF {kdf.get('name')!r}")
    try:
        costly = (
            int(kdf["memory_kib"]) > _MAX_KDF_MEMORY_KIB
            or int(kdf["iterations"]) > _MAX_KDF_ITERATIONS
            or int(kdf["lanes"]) > _MAX_KDF_LANES
        )
    except (KeyError, ValueError, TypeError):
        costly = False  # reported below as invalid parameters
    if costly:
        raise KeystoreCorruptError(
            "keystore KDF parameters exceed the limits this version accepts "
            f"(memory <= {_MAX_KDF_MEMORY_KIB} KiB, iterations <= {_MAX_KDF_ITERATIONS}, "
            f"lanes <= {_MAX_KDF_LANES}): refusing a file that could exhaust memory"
        )
    try:
        return Argon2id(
            salt=salt,
            length=32,
            iterations=int(kdf["iterations"]),
            lanes=int(kdf["lanes"]),
            memory_cost=int(kdf["memory_kib"]),
        ).derive(passphrase.encode("utf-8"))
    except (KeyError, ValueError, TypeError):
        raise KeystoreCorruptError(
            "keystore KDF parameters are invalid (keystore.json or backup corrupted)"
        ) from None


@dataclass(frozen=True, slots=True)
class _Keys:
    enc: bytes
    mac: bytes
    audit: bytes

    def __repr__(self) -> str:
        return "_Keys(<redacted>)"

    @classmethod
    def from_root(cls, root: bytes) -> _Keys:
        okm = hkdf_sha256(root, b"", b"kmsenvelope keystore keys v1", 96)
        return cls(okm[:32], okm[32:64], okm[64:])


# Derived keys cached per (directory, keystore id, salt, keyed digest of the passphrase).
_PROCESS_SECRET = secrets.token_bytes(32)
_KEY_CACHE: dict[tuple[str, str, str, bytes], _Keys] = {}
_KEY_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a key (no material)."""

    version: int
    state: str  # "active" or "destroyed"
    created: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """Metadata about one key (no material)."""

    name: str
    type: KeyType
    enabled: bool
    current: int
    created: str
    versions: tuple[VersionInfo, ...]

    @property
    def uri(self) -> str:
        return f"local:{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uri": self.uri,
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

    def __init__(self, directory: Path, store_id: str, keys: _Keys) -> None:
        self.directory = directory
        self.id = store_id
        self._keys = keys
        self.audit = AuditLog(directory, keys.audit)

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
        """Create a new, empty keystore at ``directory`` (which must not hold one)."""
        path = Path(directory).expanduser()
        if not passphrase:
            raise KeystoreError("refusing to create a keystore with an empty passphrase")
        ensure_private_dir(path)
        ensure_private_dir(path / "keys")
        with locked(path / ".lock"):
            if cls.exists(path):
                raise KeystoreError(f"{path} already holds a keystore")
            params = dict(kdf or DEFAULT_KDF)
            salt = os.urandom(16)
            params["salt"] = _b64(salt)
            keys = _Keys.from_root(_derive_root(passphrase, params, salt))
            store_id = secrets.token_hex(16)
            nonce = os.urandom(12)
            check = nonce + AESGCM(keys.enc).encrypt(nonce, _CHECK, store_id.encode())
            doc = {
                "format": STORE_FORMAT,
                "id": store_id,
                "created": _now(),
                "kdf": params,
                "check": _b64(check),
            }
            atomic_write(path / "keystore.json", json.dumps(doc, indent=2).encode())
            store = cls(path, store_id, keys)
            store.audit.append("keystore.create", "local:*")
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike[str], passphrase: str) -> Keystore:
        """Unlock an existing keystore; ``WrongPassphraseError`` if the passphrase is wrong."""
        path = Path(directory).expanduser()
        meta_path = path / "keystore.json"
        try:
            raw = meta_path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(
                f"no keystore at {path} (create one with 'kmsenvelope keys create NAME', "
                "or point --keystore / KMSENVELOPE_KEYSTORE at an existing one)"
            ) from None
        except PermissionError:
            raise KeystoreError(f"cannot read {meta_path}: permission denied") from None
        try:
            doc = json.loads(raw)
            if doc.get("format") != STORE_FORMAT:
                raise ValueError
            store_id = str(doc["id"])
            kdf = dict(doc["kdf"])
            salt = _unb64(kdf["salt"], str(meta_path))
            check = _unb64(doc["check"], str(meta_path))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeystoreCorruptError(f"{meta_path}: not a valid keystore file") from None
        digest = hmac.new(_PROCESS_SECRET, passphrase.encode("utf-8"), sha256).digest()
        cache_key = (str(path.resolve()), store_id, kdf["salt"], digest)
        # One derivation at a time: concurrent Argon2id calls would multiply the memory cost
        # (and OpenSSL's Argon2 has been seen to stall when run from several threads at once).
        with _KEY_CACHE_LOCK:
            keys = _KEY_CACHE.get(cache_key)
            if keys is None:
                keys = _Keys.from_root(_derive_root(passphrase, kdf, salt))
                try:
                    plain = AESGCM(keys.enc).decrypt(check[:12], check[12:], store_id.encode())
                except (InvalidTag, ValueError):
                    raise WrongPassphraseError(
                        f"the passphrase does not open the keystore at {path} "
                        "(check KMSENVELOPE_KEYSTORE_PASSPHRASE)"
                    ) from None
                if not hmac.compare_digest(plain, _CHECK):
                    raise KeystoreCorruptError(f"{meta_path}: passphrase check value is wrong")
                _KEY_CACHE[cache_key] = keys
        return cls(path, store_id, keys)

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

    def _load(self, name: str) -> dict[str, Any]:
        path = self._key_path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
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
        return doc

    def _save(self, doc: dict[str, Any]) -> None:
        doc["mac"] = self._mac(doc)
        atomic_write(self._key_path(doc["name"]), json.dumps(doc, indent=2).encode())

    @staticmethod
    def _info(doc: Mapping[str, Any]) -> KeyInfo:
        return KeyInfo(
            name=doc["name"],
            type=doc["type"],
            enabled=bool(doc["enabled"]),
            current=int(doc["current"]),
            created=doc["created"],
            versions=tuple(
                VersionInfo(int(v["version"]), v["state"], v["created"]) for v in doc["versions"]
            ),
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
        """Create key ``name`` with version 1."""
        check_name(name)
        if key_type not in KEY_TYPES:
            raise ConfigError(f"unknown key type {key_type!r} (choose {', '.join(KEY_TYPES)})")
        with self._lock():
            if self._key_path(name).exists():
                raise KeystoreError(f"key local:{name} already exists (rotate it instead)")
            doc: dict[str, Any] = {
                "format": KEY_FORMAT,
                "name": name,
                "type": key_type,
                "created": _now(),
                "enabled": True,
                "current": 1,
                "versions": [self._new_version(name, key_type, 1)],
            }
            self._save(doc)
            self.audit.append("key.create", f"local:{name}/1", detail={"type": key_type})
            return self._info(doc)

    def list_keys(self) -> list[KeyInfo]:
        """Every key, sorted by name."""
        with locked(self.directory / ".lock", exclusive=False):
            names = sorted(p.stem for p in (self.directory / "keys").glob("*.json"))
            return [self._info(self._load(n)) for n in names]

    def get(self, name: str) -> KeyInfo:
        with locked(self.directory / ".lock", exclusive=False):
            return self._info(self._load(name))

    def rotate(self, name: str) -> KeyInfo:
        """Add a new version and make it current; old versions still unwrap."""
        with self._lock():
            doc = self._load(name)
            version = max(int(v["version"]) for v in doc["versions"]) + 1
            doc["versions"].append(self._new_version(name, doc["type"], version))
            doc["current"] = version
            self._save(doc)
            self.audit.append("key.rotate", f"local:{name}/{version}")
            return self._info(doc)

    def set_enabled(self, name: str, enabled: bool) -> KeyInfo:
        """Disable (no wrap or unwrap) or re-enable a key."""
        with self._lock():
            doc = self._load(name)
            doc["enabled"] = enabled
            self._save(doc)
            self.audit.append("key.enable" if enabled else "key.disable", f"local:{name}")
            return self._info(doc)

    def destroy_version(self, name: str, version: int) -> KeyInfo:
        """Erase one version's material for good; what only it wrapped can no longer be read."""
        with self._lock():
            doc = self._load(name)
            entry = _find_version(doc, version)
            if entry is None:
                raise KeyNotFoundError(f"local:{name}/{version}: no such key version")
            if int(doc["current"]) == version:
                raise KeystoreError(
                    f"local:{name}/{version} is the current version; rotate the key before "
                    "destroying it"
                )
            entry["state"] = "destroyed"
            entry["material"] = None
            entry["destroyed"] = _now()
            self._save(doc)
            self.audit.append("key.destroy", f"local:{name}/{version}")
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
                raw = self._open_material(name, version, entry["material"], self._key_path(name))
                dek = self._unwrap_with(doc["type"], raw, wrapped, context)
            except Exception as exc:
                self.audit.append("unwrap", key_id, f"error: {type(exc).__name__}", context)
                raise
            self.audit.append("unwrap", key_id, "ok", context)
            return dek

    def _unwrap_with(
        self, key_type: str, raw: bytes, wrapped: WrappedKey, context: Mapping[str, str]
    ) -> bytes:
        fail = UnwrapError(
            f"{wrapped.key_id}: wrapped key did not authenticate (tampered, or wrapped under "
            "another context)"
        )
        if key_type == "aes256":
            if wrapped.algorithm != AES_ALG:
                raise UnwrapError(f"{wrapped.key_id}: unexpected algorithm {wrapped.algorithm!r}")
            ct = wrapped.ciphertext
            try:
                return AESGCM(raw).decrypt(ct[:12], ct[12:], self._aad(wrapped.key_id, context))
            except (InvalidTag, ValueError):
                raise fail from None
        if wrapped.algorithm != RSA_ALG:
            raise UnwrapError(f"{wrapped.key_id}: unexpected algorithm {wrapped.algorithm!r}")
        private = serialization.load_der_private_key(raw, password=None)
        assert isinstance(private, rsa.RSAPrivateKey)
        try:
            return private.decrypt(wrapped.ciphertext, _OAEP)
        except ValueError:
            raise fail from None

    # -- backup and restore -----------------------------------------------------------------

    def backup(self, target: str | os.PathLike[str], passphrase: str) -> int:
        """Write every key (all versions) to an encrypted backup file; return the key count."""
        if not passphrase:
            raise KeystoreError("refusing to write a backup with an empty passphrase")
        with self._lock():
            keys = []
            for path in sorted((self.directory / "keys").glob("*.json")):
                doc = self._load(path.stem)
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
                        **{k: doc[k] for k in doc if k not in ("versions", "mac")},
                        "versions": versions,
                    }
                )
            plain = json.dumps({"keystore_id": self.id, "created": _now(), "keys": keys}).encode()
            params = dict(DEFAULT_KDF)
            salt = os.urandom(16)
            params["salt"] = _b64(salt)
            bkey = hkdf_sha256(
                _derive_root(passphrase, params, salt), b"", b"kmsenvelope backup v1", 32
            )
            nonce = os.urandom(12)
            ct = AESGCM(bkey).encrypt(nonce, plain, BACKUP_FORMAT.encode())
            out = {
                "format": BACKUP_FORMAT,
                "kdf": params,
                "nonce": _b64(nonce),
                "ciphertext": _b64(ct),
            }
            target_path = Path(target).expanduser()
            atomic_write(target_path, json.dumps(out, indent=2).encode())
            self.audit.append("keystore.backup", "local:*", detail={"keys": len(keys)})
            return len(keys)

    def restore(self, source: str | os.PathLike[str], passphrase: str) -> list[str]:
        """Merge keys from a backup; return the names restored.

        Keys or versions missing here are added; identical ones are kept; a version whose
        material differs is a conflict and nothing is written.
        """
        data = read_backup(source, passphrase)
        with self._lock():
            planned: list[dict[str, Any]] = []
            for key in data["keys"]:
                name = check_name(key["name"])
                try:
                    existing = self._load(name)
                except KeyNotFoundError:
                    existing = None
                planned.append(self._merge(name, key, existing))
            for doc in planned:
                self._save(doc)
            names = [d["name"] for d in planned]
            self.audit.append("keystore.restore", "local:*", detail={"keys": names})
            return names

    def _merge(
        self, name: str, key: Mapping[str, Any], existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        doc = existing or {
            "format": KEY_FORMAT,
            "name": name,
            "type": key["type"],
            "created": key["created"],
            "enabled": bool(key["enabled"]),
            "current": int(key["current"]),
            "versions": [],
        }
        if doc["type"] != key["type"]:
            raise KeystoreError(
                f"restore conflict: local:{name} has type {doc['type']} here "
                f"but {key['type']} in the backup"
            )
        path = self._key_path(name)
        for v in key["versions"]:
            number = int(v["version"])
            mine = _find_version(doc, number)
            raw = _unb64(v["raw"], "backup") if "raw" in v else None
            if mine is None:
                entry = {k: v[k] for k in v if k != "raw"}
                entry["material"] = (
                    self._seal_material(name, number, raw) if raw is not None else None
                )
                doc["versions"].append(entry)
            elif raw is not None and mine.get("material") is not None:
                current = self._open_material(name, number, mine["material"], path)
                if not hmac.compare_digest(current, raw):
                    raise KeystoreError(
                        f"restore conflict: local:{name}/{number} exists here with different "
                        "key material; nothing was restored"
                    )
        doc["versions"].sort(key=lambda e: int(e["version"]))
        doc["current"] = max(int(doc["current"]), int(key["current"]))
        return doc


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
    bkey = hkdf_sha256(_derive_root(passphrase, params, salt), b"", b"kmsenvelope backup v1", 32)
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
