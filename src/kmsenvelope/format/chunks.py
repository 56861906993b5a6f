"""The v1 payload chunk codec: chunk nonces and the final flag, sealing and opening chunks (7).

A payload is AES-256-GCM chunks of ``chunk_size`` plaintext bytes (the last one shorter or
full, never empty unless it is the only one), each with a 16-byte tag and a 12-byte nonce: an
11-byte big-endian chunk index and a last-chunk flag. These functions work on consecutive
chunks in buffers the caller owns; ``kmsenvelope.pipeline`` feeds them from streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import AuthenticationError

__all__ = [
    "SINGLE_FINAL_NONCE",
    "TAG_SIZE",
    "ChunkCodec",
    "chunk_nonce",
    "open_chunks",
    "payload_length",
    "seal_chunks",
]

TAG_SIZE = 16
_MAX_COUNTER = 1 << 64  # far below 2**88; a larger payload is refused, never wrapped
SINGLE_FINAL_NONCE = bytes(11) + b"\x01"
"""The nonce of chunk 0 when it is also the last one: a payload of one chunk."""


def chunk_nonce(index: int, last: bool) -> bytes:
    """The 12-byte nonce of chunk ``index``: big-endian counter, then 0x01 if last else 0x00."""
    if index >= _MAX_COUNTER:
        raise ValueError("payload has too many chunks")
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class ChunkCodec(Protocol):
    """:func:`seal_chunks` or :func:`open_chunks`: one direction of the chunk codec."""

    def __call__(
        self, aead: AESGCM, src: memoryview, dst: memoryview, first: int, last: bool, chunk: int
    ) -> int: ...


def _chunks(
    src: memoryview, block: int, first: int, last: bool
) -> Iterator[tuple[memoryview, int, bool]]:
    """Split ``src`` into pieces of ``block`` bytes (at least one piece, the final one maybe
    shorter or empty); yield each with its chunk index and whether it is the final chunk."""
    count = max(1, -(-len(src) // block))
    for j in range(count):
        yield src[j * block : (j + 1) * block], first + j, last and j == count - 1


def seal_chunks(
    aead: AESGCM, src: memoryview, dst: memoryview, first: int, last: bool, chunk: int
) -> int:
    """Encrypt ``src`` as chunks ``first``, ``first + 1``, ... of ``chunk`` bytes into ``dst``
    (the final one may be short if ``last``, and carries the last-chunk flag); return the bytes
    written to ``dst``."""
    encrypt_into = aead.encrypt_into
    out = 0
    for piece, index, final in _chunks(src, chunk, first, last):
        end = out + len(piece) + TAG_SIZE
        encrypt_into(chunk_nonce(index, final), piece, None, dst[out:end])
        out = end
    return out


def open_chunks(
    aead: AESGCM, src: memoryview, dst: memoryview, first: int, last: bool, chunk: int
) -> int:
    """Authenticate and decrypt the chunks in ``src`` into ``dst``; return the plaintext bytes.

    Raises ``AuthenticationError`` at the first chunk that fails (section 7.3); the caller must
    not use ``dst`` then: it may hold unauthenticated plaintext.
    """
    decrypt_into = aead.decrypt_into
    out = 0
    for piece, index, final in _chunks(src, chunk + TAG_SIZE, first, last):
        plain = len(piece) - TAG_SIZE
        if plain < 0 or (final and plain == 0 and index > 0):
            # A chunk too short for its tag, or an empty final chunk after data.
            raise AuthenticationError()
        try:
            decrypt_into(chunk_nonce(index, final), piece, None, dst[out : out + plain])
        except InvalidTag:
            raise AuthenticationError() from None
        out += plain
    return out


def payload_length(payload_bytes: int, chunk_size: int) -> int | None:
    """Plaintext length implied by a payload of ``payload_bytes``, or None if impossible (7.4)."""
    block = chunk_size + TAG_SIZE
    full, rest = divmod(payload_bytes, block)
    if rest == 0:
        if full == 0:
            return None
        return full * chunk_size
    if rest < TAG_SIZE or (rest == TAG_SIZE and full > 0):
        return None
    return full * chunk_size + rest - TAG_SIZE
