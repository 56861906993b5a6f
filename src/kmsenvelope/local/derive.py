"""Keys from a passphrase for the local keystore and its backups: Argon2id under ceilings.

Argon2id parameters come from files (keystore.json, a backup) and are checked against a ceiling
*before* anything is derived, so a crafted file cannot make an unlock take minutes or gigabytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..errors import KeystoreCorruptError
from ..kdf import hkdf_sha256

__all__ = ["KDF_CEILING", "OPEN_CEILING", "KdfCeiling", "StoreKeys", "check_kdf", "derive_root"]


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
    enc: bytes
    mac: bytes
    audit: bytes

    def __repr__(self) -> str:
        return "StoreKeys(<redacted>)"

    @classmethod
    def from_root(cls, root: bytes) -> StoreKeys:
        okm = hkdf_sha256(root, b"", b"kmsenvelope keystore keys v1", 96)
        return cls(okm[:32], okm[32:64], okm[64:])
