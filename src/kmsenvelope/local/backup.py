"""Keystore backups: every key (all versions) in one file sealed under its own passphrase
(Argon2id under the new-keystore ceiling, checked before deriving), and restoring one as a merge
that refuses another key of the same name (identity checks).

A backup is JSON: ``format``, ``kdf`` (Argon2id parameters and salt), ``nonce`` and the AES-256-GCM
``ciphertext`` of ``{"keystore_id", "created", "keys"}``, each key as in its key file but with the
raw material of each version (``raw``) instead of the sealed one, and no generation or MAC.
"""

from __future__ import annotations

import hmac
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import KeyNotFoundError, KeystoreCorruptError, KeystoreError, WrongPassphraseError
from ..format.keyschedule import hkdf_sha256
from ..safe_files import atomic_write, replaceable_target
from .encoding import b64, canonical, now, unb64
from .files import KEYSTORE_FILES
from .keyfiles import KeyFiles, check_name, find_version, key_document
from .unlock import DEFAULT_KDF, KDF_CEILING, derive_root

__all__ = ["BACKUP_FORMAT", "check_backup_target", "merge_backup", "read_backup", "write_backup"]

BACKUP_FORMAT = "kmsenvelope-keystore-backup/1"


def _backup_key(passphrase: str, params: Mapping[str, Any], salt: bytes, what: str) -> bytes:
    """The AES key of a backup; the ceiling is checked before Argon2id runs: a crafted backup
    asking for gigabytes is refused at once instead of holding the memory for minutes."""
    root = derive_root(passphrase, params, salt, KDF_CEILING, what)
    return hkdf_sha256(root, b"", b"kmsenvelope backup v1", 32)


def check_backup_target(target: str | os.PathLike[str], passphrase: str) -> None:
    """Refuse an empty passphrase or a target that is not a file to replace, before any work."""
    if not passphrase:
        raise KeystoreError("refusing to write a backup with an empty passphrase")
    replaceable_target(Path(target).expanduser(), "backup")


def write_backup(
    files: KeyFiles,
    meta: Mapping[str, Any],
    target: str | os.PathLike[str] | None,
    passphrase: str,
) -> tuple[int, bytes]:
    """Write every key of ``files`` (all versions) to an encrypted backup at ``target``;
    return the key count and, when ``target`` is None, the backup itself (never written to
    any file: the HSM daemon hands it to its admin client). The caller holds the lock.

    ``target`` is replaced atomically only if it is a regular file or absent; a symbolic link
    has the file it names replaced; a device, FIFO, socket or directory is refused.
    """
    keys = []
    for name in files.names(meta):
        doc = files.load(name, meta)
        path = files.key_path(name)
        versions = []
        for v in doc["versions"]:
            item = {k: v[k] for k in v if k != "material"}
            if v.get("material") is not None:
                raw = files.open_material(doc["name"], int(v["version"]), v["material"], path)
                item["raw"] = b64(raw)
            versions.append(item)
        keys.append(
            {
                **{k: doc[k] for k in doc if k not in ("versions", "mac", "generation")},
                "versions": versions,
            }
        )
    plain = json.dumps({"keystore_id": files.id, "created": now(), "keys": keys}).encode()
    params = dict(DEFAULT_KDF)
    salt = os.urandom(16)
    params["salt"] = b64(salt)
    nonce = os.urandom(12)
    ct = AESGCM(_backup_key(passphrase, params, salt, "backup")).encrypt(
        nonce, plain, BACKUP_FORMAT.encode()
    )
    out = {"format": BACKUP_FORMAT, "kdf": params, "nonce": b64(nonce), "ciphertext": b64(ct)}
    data = json.dumps(out, indent=2).encode()
    if target is None:
        return len(keys), data
    target_path = replaceable_target(Path(target).expanduser(), "backup")
    atomic_write(target_path, data, refuse=KEYSTORE_FILES)
    return len(keys), b""


def read_backup(source: str | os.PathLike[str], passphrase: str) -> dict[str, Any]:
    """Decrypt a backup file; ``WrongPassphraseError`` if the passphrase does not open it."""
    path = Path(source).expanduser()
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != BACKUP_FORMAT:
            raise ValueError
        params = dict(doc["kdf"])
        salt = unb64(params["salt"], str(path))
        nonce = unb64(doc["nonce"], str(path))
        ct = unb64(doc["ciphertext"], str(path))
    except FileNotFoundError:
        raise KeystoreError(f"backup file {path} does not exist") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KeystoreCorruptError(f"{path}: not a kmsenvelope keystore backup") from None
    bkey = _backup_key(passphrase, params, salt, str(path))
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


def merge_backup(
    files: KeyFiles, meta: Mapping[str, Any], data: Mapping[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Merge the keys of backup ``data`` (from :func:`read_backup`) into ``files``' keys: the
    names restored, and the key files that changed (for the caller to commit).

    Keys or versions missing here are added; identical ones are kept. ``KeystoreError`` if a
    version exists with different material, or a key of the same name here is another key (a
    different identity; for keys made before identities existed: no version with material on
    both sides to compare).
    """
    planned: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for key in data["keys"]:
        name = check_name(key["name"])
        try:
            existing = files.load(name, meta)
        except KeyNotFoundError:
            existing = None
        before = None if existing is None else canonical(existing)
        doc = _merge(files, name, key, existing)
        planned.append(doc)
        if before is None or canonical(doc) != before:
            changed.append(doc)
    return [d["name"] for d in planned], changed


def _merge(
    files: KeyFiles, name: str, key: Mapping[str, Any], existing: dict[str, Any] | None
) -> dict[str, Any]:
    if existing is None:
        doc = key_document(
            name,
            key["type"],
            key_uuid=str(key.get("uuid") or uuid.uuid4()),
            created=key["created"],
            enabled=bool(key["enabled"]),
            current=int(key["current"]),
            versions=[],
        )
    else:
        doc = existing
    if doc["type"] != key["type"]:
        raise KeystoreError(
            f"restore conflict: local:{name} has type {doc['type']} here "
            f"but {key['type']} in the backup"
        )
    path = files.key_path(name)
    compared = False
    for v in key["versions"]:
        number = int(v["version"])
        entry = find_version(doc, number)
        raw = unb64(v["raw"], "backup") if "raw" in v else None
        if entry is None:
            new = {k: v[k] for k in v if k != "raw"}
            new["material"] = files.seal_material(name, number, raw) if raw is not None else None
            doc["versions"].append(new)
        elif raw is not None and entry.get("material") is not None:
            current = files.open_material(name, number, entry["material"], path)
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
