"""Deterministic, key-in-hand format operations: build or open an envelope given its DEK.

For known-answer test vectors, independent implementations and re-wrapping. The caller is
responsible for the DEK and nonce: reusing a (DEK, nonce) pair for two different plaintexts
destroys confidentiality. Everyday code should use ``kmsenvelope.encrypt``/``decrypt``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from .errors import AuthenticationError, MalformedEnvelopeError
from .header import (
    COMPACT_PREFIX,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LIMITS,
    DEK_SIZE,
    NONCE_SIZE,
    Header,
    Limits,
    derive_keys,
    new_header,
    read_header,
    validate_context,
)
from .kek import WrappedKey
from .stream import decrypt_payload, encrypt_payload

__all__ = ["open_with_dek", "parse_header", "seal"]


def seal(
    plaintext: bytes,
    recipients: Sequence[WrappedKey],
    context: Mapping[str, str],
    *,
    dek: bytes,
    nonce: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """The binary envelope for ``plaintext`` with exactly these inputs (deterministic)."""
    if len(dek) != DEK_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError(f"dek must be {DEK_SIZE} bytes and nonce {NONCE_SIZE} bytes")
    header = new_header(chunk_size, nonce, validate_context(context), recipients)
    payload_key, mac_key = derive_keys(dek, nonce)
    out = io.BytesIO()
    out.write(header.encode(mac_key))
    encrypt_payload(io.BytesIO(plaintext), out, payload_key, chunk_size)
    return out.getvalue()


def parse_header(envelope: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Header, int]:
    """Parse the header of a binary envelope; return it and its size (MAC not checked)."""
    if envelope.startswith(COMPACT_PREFIX):
        raise MalformedEnvelopeError("parse_header takes the binary form; use from_compact")
    return read_header(io.BytesIO(envelope), limits)


def open_with_dek(envelope: bytes, dek: bytes) -> bytes:
    """Verify the header MAC with ``dek`` and decrypt; ``AuthenticationError`` on any failure."""
    header, size = parse_header(envelope)
    payload_key, mac_key = derive_keys(dek, header.nonce)
    if not header.verify_mac(mac_key):
        raise AuthenticationError()
    out = io.BytesIO()
    decrypt_payload(io.BytesIO(envelope[size:]), out, payload_key, header.chunk_size)
    return out.getvalue()
