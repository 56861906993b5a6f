"""Key derivation helpers shared by the format and the local keystore."""

from __future__ import annotations

import hmac
from hashlib import sha256

__all__ = ["hkdf_sha256"]


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256: extract with ``salt`` (zeros if empty), expand with ``info``."""
    if length > 255 * 32:
        raise ValueError("HKDF-SHA256 output is limited to 8160 bytes")
    prk = hmac.digest(salt or bytes(32), ikm, sha256)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), sha256)
        out += block
        counter += 1
    return out[:length]
