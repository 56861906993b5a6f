"""The v1 payload: AES-256-GCM chunks whose nonce is an 11-byte counter and a last-chunk flag.

Memory stays constant: a few buffers of one chunk each are allocated once and reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import AuthenticationError

__all__ = ["chunk_nonce", "decrypt_payload", "encrypt_payload", "payload_length"]

TAG_SIZE = 16
_MAX_COUNTER = 1 << 64  # far below 2**88; a larger payload is refused, never wrapped
Progress = Callable[[int], None]


def chunk_nonce(index: int, last: bool) -> bytes:
    """The 12-byte nonce of chunk ``index``: big-endian counter, then 0x01 if last else 0x00."""
    if index >= _MAX_COUNTER:
        raise ValueError("payload has too many chunks")
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _read_full(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src``; return the bytes read (fewer only at end of input)."""
    got = 0
    size = len(view)
    readinto = getattr(src, "readinto", None)
    while got < size:
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = src.read(size - got)
            n = len(data)
            view[got : got + n] = data
        if not n:
            break
        got += n
    return got


def encrypt_payload(
    src: BinaryIO,
    dst: BinaryIO,
    payload_key: bytes,
    chunk_size: int,
    progress: Progress | None = None,
) -> int:
    """Encrypt all of ``src`` into ``dst`` as v1 chunks; return the plaintext length."""
    aead = AESGCM(payload_key)
    cur, nxt = bytearray(chunk_size), bytearray(chunk_size)
    out = bytearray(chunk_size + TAG_SIZE)
    out_view = memoryview(out)
    n = _read_full(src, memoryview(cur))
    index = 0
    total = 0
    while True:
        m = _read_full(src, memoryview(nxt)) if n == chunk_size else 0
        last = m == 0
        aead.encrypt_into(
            chunk_nonce(index, last), memoryview(cur)[:n], None, out_view[: n + TAG_SIZE]
        )
        dst.write(out_view[: n + TAG_SIZE])
        total += n
        if progress is not None:
            progress(n)
        if last:
            return total
        cur, nxt = nxt, cur
        n = m
        index += 1


def decrypt_payload(
    src: BinaryIO,
    dst: BinaryIO,
    payload_key: bytes,
    chunk_size: int,
    progress: Progress | None = None,
) -> int:
    """Authenticate and decrypt v1 chunks from ``src`` into ``dst``; return the plaintext length.

    Each chunk is authenticated before any of it is written. Truncation, reordering,
    duplication and trailing data all raise ``AuthenticationError``.
    """
    aead = AESGCM(payload_key)
    block = chunk_size + TAG_SIZE
    cur, nxt = bytearray(block), bytearray(block)
    out = bytearray(chunk_size)
    out_view = memoryview(out)
    n = _read_full(src, memoryview(cur))
    index = 0
    total = 0
    while True:
        m = _read_full(src, memoryview(nxt)) if n == block else 0
        last = m == 0
        if n < TAG_SIZE or (last and n == TAG_SIZE and index > 0):
            # A chunk too short for its tag, or an empty final chunk after data.
            raise AuthenticationError()
        plain = n - TAG_SIZE
        try:
            aead.decrypt_into(chunk_nonce(index, last), memoryview(cur)[:n], None, out_view[:plain])
        except InvalidTag:
            raise AuthenticationError() from None
        dst.write(out_view[:plain])
        total += plain
        if progress is not None:
            progress(plain)
        if last:
            return total
        cur, nxt = nxt, cur
        n = m
        index += 1


def payload_length(payload_bytes: int, chunk_size: int) -> int | None:
    """Plaintext length implied by a payload of ``payload_bytes``, or None if impossible."""
    block = chunk_size + TAG_SIZE
    full, rest = divmod(payload_bytes, block)
    if rest == 0:
        if full == 0:
            return None
        return full * chunk_size
    if rest < TAG_SIZE or (rest == TAG_SIZE and full > 0):
        return None
    return full * chunk_size + rest - TAG_SIZE


def encrypt_bytes(
    data: bytes | bytearray | memoryview, payload_key: bytes, chunk_size: int
) -> bytes:
    """In-memory form of :func:`encrypt_payload` (no per-call buffers of a whole chunk)."""
    aead = AESGCM(payload_key)
    view = memoryview(data)
    length = len(view)
    if length <= chunk_size:
        return aead.encrypt(chunk_nonce(0, True), view, None)
    parts = []
    last_index = (length - 1) // chunk_size
    for index in range(last_index + 1):
        piece = view[index * chunk_size : (index + 1) * chunk_size]
        parts.append(aead.encrypt(chunk_nonce(index, index == last_index), piece, None))
    return b"".join(parts)


def decrypt_bytes(payload: bytes | memoryview, payload_key: bytes, chunk_size: int) -> bytes:
    """In-memory form of :func:`decrypt_payload`; nothing is returned unless all chunks pass."""
    view = memoryview(payload)
    if payload_length(len(view), chunk_size) is None:
        raise AuthenticationError()
    aead = AESGCM(payload_key)
    block = chunk_size + TAG_SIZE
    last_index = max(len(view) - 1, 0) // block
    parts = []
    try:
        for index in range(last_index + 1):
            piece = view[index * block : (index + 1) * block]
            parts.append(aead.decrypt(chunk_nonce(index, index == last_index), piece, None))
    except InvalidTag:
        raise AuthenticationError() from None
    return b"".join(parts)
