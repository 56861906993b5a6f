"""The v1 key schedule: the payload and MAC keys of a data key, and the header MAC (6, 5.6).

HMAC-SHA256 is computed from two ``hashlib.sha256`` calls over precomputed pads (RFC 2104):
for the short keys and messages of an envelope header this is about twice as fast as
``hmac.digest``, whose OpenSSL one-shot looks the algorithm up on every call. The local
keystore derives its own keys with the same HKDF.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

__all__ = [
    "DEK_SIZE",
    "MAC_SIZE",
    "derive_keys",
    "header_mac",
    "hkdf_sha256",
    "hkdf_sha256_two_blocks",
    "hmac_sha256",
    "verify_header_mac",
]

DEK_SIZE = 32
"""Bytes of a data key (the HKDF input)."""
MAC_SIZE = 32
"""Bytes of the header MAC (HMAC-SHA256)."""
KDF_INFO = b"kmsenvelope/v1 keys"

_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_IPAD_FILL = b"\x36" * _BLOCK  # zero padding, XORed with the pad byte
_OPAD_FILL = b"\x5c" * _BLOCK
# The padding after a 32-byte key (a DEK-derived key, an HKDF PRK) and a 16-byte one (the
# header nonce, HKDF's salt): the per-envelope HMACs below use them without a _pads call.
_IPAD_32, _OPAD_32 = _IPAD_FILL[32:], _OPAD_FILL[32:]
_IPAD_48, _OPAD_48 = _IPAD_FILL[16:], _OPAD_FILL[16:]
_INFO_1 = KDF_INFO + b"\x01"  # HKDF-Expand's first and second block messages (after T(1))
_INFO_2 = KDF_INFO + b"\x02"


def _pads(key: bytes) -> tuple[bytes, bytes]:
    """The inner and outer HMAC-SHA256 key blocks for ``key``."""
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    fill = _BLOCK - len(key)
    return (
        key.translate(_IPAD) + _IPAD_FILL[:fill],
        key.translate(_OPAD) + _OPAD_FILL[:fill],
    )


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """RFC 2104 HMAC-SHA256 (identical to ``hmac.digest(key, message, 'sha256')``)."""
    if len(key) == 32:  # every key of an envelope: the pads without a call
        inner = key.translate(_IPAD) + _IPAD_32
        return sha256(key.translate(_OPAD) + _OPAD_32 + sha256(inner + message).digest()).digest()
    inner, outer = _pads(key)
    return sha256(outer + sha256(inner + message).digest()).digest()


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256: extract with ``salt`` (zeros if empty), expand with ``info``."""
    if length > 255 * 32:
        raise ValueError("HKDF-SHA256 output is limited to 8160 bytes")
    inner, outer = _pads(hmac_sha256(salt or bytes(32), ikm))
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = sha256(outer + sha256(inner + block + info + bytes((counter,))).digest()).digest()
        out += block
        counter += 1
    return out[:length]


def hkdf_sha256_two_blocks(ikm: bytes, salt: bytes, info: bytes) -> tuple[bytes, bytes]:
    """``hkdf_sha256(ikm, salt, info, 64)`` as its two 32-byte halves, written out (it runs
    once per envelope)."""
    inner, outer = _pads(salt or bytes(32))
    prk = sha256(outer + sha256(inner + ikm).digest()).digest()
    inner = prk.translate(_IPAD) + _IPAD_FILL[32:]
    outer = prk.translate(_OPAD) + _OPAD_FILL[32:]
    first = sha256(outer + sha256(inner + info + b"\x01").digest()).digest()
    return first, sha256(outer + sha256(inner + first + info + b"\x02").digest()).digest()


def derive_keys(dek: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """Return ``(payload_key, mac_key)`` = HKDF-SHA256(DEK, salt=nonce, 'kmsenvelope/v1 keys').

    :func:`hkdf_sha256_two_blocks` written out for the 16-byte nonce of an envelope (it runs
    once per envelope): six SHA-256 calls and nothing else that costs."""
    if len(nonce) != 16:
        return hkdf_sha256_two_blocks(dek, nonce, KDF_INFO)
    prk = sha256(
        nonce.translate(_OPAD) + _OPAD_48 + sha256(nonce.translate(_IPAD) + _IPAD_48 + dek).digest()
    ).digest()
    inner = prk.translate(_IPAD) + _IPAD_32
    outer = prk.translate(_OPAD) + _OPAD_32
    first = sha256(outer + sha256(inner + _INFO_1).digest()).digest()
    return first, sha256(outer + sha256(inner + first + _INFO_2).digest()).digest()


def header_mac(mac_key: bytes, authenticated: bytes) -> bytes:
    """The header MAC: HMAC-SHA256 over the prefix and body bytes (``authenticated``)."""
    return hmac_sha256(mac_key, authenticated)


def verify_header_mac(mac_key: bytes, authenticated: bytes, mac: bytes) -> bool:
    """Constant-time check of a stored header MAC against the bytes exactly as received."""
    return hmac.compare_digest(hmac_sha256(mac_key, authenticated), mac)
