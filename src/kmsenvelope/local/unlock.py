"""Unlocking a keystore: passphrase -> Argon2id (under ceilings) -> the keystore's keys, proved
by keystore.json's passphrase check value; derived keys cached per process, never the passphrase.

Argon2id parameters come from files (keystore.json, a backup) and are checked against a ceiling
*before* anything is derived, so a crafted file cannot make an unlock take minutes or gigabytes.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..errors import KeystoreCorruptError, KeystoreError, WrongPassphraseError
from ..format.keyschedule import hkdf_sha256
from ..safe_files import read_regular
from .encoding import b64, now, unb64
from .files import KEYSTORE_FILES

__all__ = [
    "DEFAULT_KDF",
    "KDF_CEILING",
    "LEGACY_STORE_FORMAT",
    "MIN_PASSPHRASE_CHARS",
    "OPEN_CEILING",
    "PASSPHRASE_ENV",
    "STORE_FILE",
    "STORE_FORMAT",
    "KdfCeiling",
    "StoreKeys",
    "check_kdf",
    "check_new_passphrase",
    "check_passphrase_length",
    "derive_root",
    "make_check",
    "new_kdf",
    "new_store",
    "unlock",
]

STORE_FILE = "keystore.json"
STORE_FORMAT = "kmsenvelope-keystore/2"
LEGACY_STORE_FORMAT = "kmsenvelope-keystore/1"
PASSPHRASE_ENV = "KMSENVELOPE_KEYSTORE_PASSPHRASE"  # noqa: S105 - a variable name
DEFAULT_KDF: dict[str, Any] = {"name": "argon2id", "iterations": 3, "memory_kib": 65536, "lanes": 4}
MIN_PASSPHRASE_CHARS = 8
_CHECK = b"kmsenvelope keystore passphrase check"


@dataclass(frozen=True, slots=True)
class KdfCeiling:
    """Upper bounds on Argon2id parameters read from a file, checked before deriving: a crafted
    file must not be able to make an unlock take minutes or gigabytes."""

    memory_kib: int
    iterations: int
    lanes: int = 64


KDF_CEILING = KdfCeiling(memory_kib=1024 * 1024, iterations=10)
"""For new keystores and for every backup restored: 1 GiB of memory, 10 passes."""
OPEN_CEILING = KdfCeiling(memory_kib=4 * 1024 * 1024, iterations=64)
# Opening an existing keystore.json: the older, higher bound, so keystores created with large
# custom parameters before KDF_CEILING existed still open.


def check_kdf(kdf: Mapping[str, Any], ceiling: KdfCeiling, what: str) -> None:
    """Refuse Argon2id parameters above ``ceiling`` (before anything is derived)."""
    if kdf.get("name") != "argon2id":
        raise KeystoreCorruptError(f"{what}: unsupported KDF {kdf.get('name')!r}")
    try:
        costly = (
            int(kdf["memory_kib"]) > ceiling.memory_kib
            or int(kdf["iterations"]) > ceiling.iterations
            or int(kdf["lanes"]) > ceiling.lanes
        )
    except (KeyError, ValueError, TypeError):
        costly = False  # reported by derive_root as invalid parameters
    if costly:
        raise KeystoreCorruptError(
            f"{what}: KDF parameters exceed the limits this keystore accepts "
            f"(memory <= {ceiling.memory_kib} KiB, iterations <= {ceiling.iterations}, "
            f"lanes <= {ceiling.lanes}): refusing a file that could exhaust memory or time"
        )


def derive_root(
    passphrase: str, kdf: Mapping[str, Any], salt: bytes, ceiling: KdfCeiling, what: str
) -> bytes:
    """The Argon2id root key of ``passphrase`` (``kdf`` checked against ``ceiling`` first)."""
    check_kdf(kdf, ceiling, what)
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
class StoreKeys:
    """The keystore's keys: ``enc`` seals key material, ``mac`` signs its files, ``audit``
    chains its audit log."""

    enc: bytes
    mac: bytes
    audit: bytes

    def __repr__(self) -> str:
        return "StoreKeys(<redacted>)"

    @classmethod
    def from_root(cls, root: bytes) -> StoreKeys:
        okm = hkdf_sha256(root, b"", b"kmsenvelope keystore keys v1", 96)
        return cls(okm[:32], okm[32:64], okm[64:])


def _check_aad(store_id: str, store_format: str) -> bytes:
    """Format 1 bound the check to the id; format 2 binds the format too, so keystore.json
    cannot be relabelled as format 1 (which has no generations) to get past them."""
    if store_format == LEGACY_STORE_FORMAT:
        return store_id.encode()
    return f"{store_id}|{store_format}".encode()


def make_check(keys: StoreKeys, store_id: str, store_format: str) -> bytes:
    """A new passphrase check value: a known text sealed under ``keys.enc``."""
    nonce = os.urandom(12)
    return nonce + AESGCM(keys.enc).encrypt(nonce, _CHECK, _check_aad(store_id, store_format))


def check_passphrase_length(passphrase: str) -> None:
    """Refuse a new keystore's passphrase shorter than ``MIN_PASSPHRASE_CHARS``."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise KeystoreError(
            f"a new keystore's passphrase must have at least {MIN_PASSPHRASE_CHARS} characters"
        )


def check_new_passphrase(passphrase: str) -> None:
    """Refuse an empty or short passphrase for a new keystore."""
    if not passphrase:
        raise KeystoreError("refusing to create a keystore with an empty passphrase")
    check_passphrase_length(passphrase)


def new_kdf(kdf: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Argon2id parameters of a new keystore (``DEFAULT_KDF`` if None), under the ceiling."""
    params = dict(kdf or DEFAULT_KDF)
    check_kdf(params, KDF_CEILING, "new keystore")
    return params


def new_store(
    passphrase: str, params: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], StoreKeys]:
    """keystore.json's unlock fields of a new keystore (format, id, created, kdf with a new salt,
    check) and the keys ``passphrase`` derives under them."""
    kdf = dict(params)
    salt = os.urandom(16)
    kdf["salt"] = b64(salt)
    keys = StoreKeys.from_root(derive_root(passphrase, kdf, salt, KDF_CEILING, where))
    store_id = secrets.token_hex(16)
    fields: dict[str, Any] = {
        "format": STORE_FORMAT,
        "id": store_id,
        "created": now(),
        "kdf": kdf,
        "check": b64(make_check(keys, store_id, STORE_FORMAT)),
    }
    return fields, keys


# Derived keys cached per (directory, keystore id, salt, keyed digest of the passphrase).
_PROCESS_SECRET = secrets.token_bytes(32)
_KEY_CACHE: dict[tuple[str, str, str, bytes], StoreKeys] = {}
_KEY_CACHE_LOCK = threading.Lock()


def unlock(path: Path, passphrase: str) -> tuple[str, StoreKeys]:
    """The id and keys of the keystore at ``path``; ``WrongPassphraseError`` if the passphrase
    does not open it. keystore.json's MAC and generation are checked by the caller."""
    meta_path = path / STORE_FILE
    try:
        raw = read_regular(meta_path, refuse=KEYSTORE_FILES)
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
        salt = unb64(kdf["salt"], str(meta_path))
        check = unb64(doc["check"], str(meta_path))
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
            aad = _check_aad(store_id, str(doc["format"]))
            try:
                plain = AESGCM(keys.enc).decrypt(check[:12], check[12:], aad)
            except (InvalidTag, ValueError):
                raise WrongPassphraseError(_wrong_passphrase(path, passphrase)) from None
            if not hmac.compare_digest(plain, _CHECK):
                raise KeystoreCorruptError(f"{meta_path}: passphrase check value is wrong")
            _KEY_CACHE[cache_key] = keys
    return store_id, keys


def _wrong_passphrase(path: Path, passphrase: str) -> str:
    """The wrong-passphrase message; it names the environment variable only when the
    passphrase came from it."""
    from_env = os.environ.get(PASSPHRASE_ENV) == passphrase
    hint = f" (it came from {PASSPHRASE_ENV})" if from_env else ""
    return f"the passphrase does not open the keystore at {path}{hint}"
