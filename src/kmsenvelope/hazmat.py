"""The low-level layer: the format's building blocks, and key-in-hand envelope operations.

For known-answer test vectors, independent implementations, re-wrapping and tools that need
the format's parts: the header codec (``parse_header``, ``Header``, ``Limits``), the key
schedule (``derive_keys``), the chunk codec (``chunk_nonce``, ``encrypt_payload``,
``decrypt_payload``), the compact form (``to_compact``, ``from_compact``), and ``seal`` /
``open_with_dek``. The caller is responsible for the DEK and nonce: reusing a (DEK, nonce) pair
for two different plaintexts destroys confidentiality. Everyday code should use
``kmsenvelope.encrypt``/``decrypt``: the recipes check everything these leave to you.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from .errors import AuthenticationError, MalformedEnvelopeError
from .format.chunks import chunk_nonce
from .format.compact import COMPACT_PREFIX, from_compact, to_compact
from .format.header import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LIMITS,
    NONCE_SIZE,
    Header,
    Limits,
    new_header,
    read_header,
    validate_context,
)
from .format.keyschedule import DEK_SIZE, derive_keys
from .kek import WrappedKey
from .pipeline import decrypt_payload, encrypt_payload

__all__ = [
    "DEFAULT_LIMITS",
    "Header",
    "Limits",
    "chunk_nonce",
    "decrypt_payload",
    "derive_keys",
    "encrypt_payload",
    "from_compact",
    "open_with_dek",
    "parse_header",
    "seal",
    "to_compact",
]


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
