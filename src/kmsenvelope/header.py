"""Format v1 header: encoding, parsing with hard limits, key derivation and the header MAC.

The normative description is ``docs/format.md``; this module follows it field by field.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import BinaryIO

from .errors import MalformedEnvelopeError
from .kdf import hkdf_sha256_two_blocks, hmac_sha256
from .kek import NO_PARAMS, WrappedKey, scheme_of

__all__ = [
    "COMPACT_PREFIX",
    "DEFAULT_CHUNK_SIZE",
    "MAGIC",
    "Header",
    "Limits",
    "derive_keys",
    "encode_context",
    "parse_header",
    "read_header",
]

MAGIC = b"KMSENV\x01"  # 6-byte name + 1-byte format version
COMPACT_PREFIX = b"kmsenv1."
DEK_SIZE = 32
NONCE_SIZE = 16
MAC_SIZE = 32
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 1 << 24
_KDF_INFO = b"kmsenvelope/v1 keys"
_PREFIX = struct.Struct(">7sI")  # magic, header body length
_U16 = struct.Struct(">H")
_EMPTY_CONTEXT = b"\x00\x00"
_NO_CONTEXT: Mapping[str, str] = MappingProxyType({})  # shared: it cannot be changed


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard limits applied to untrusted input before anything is allocated."""

    max_header_size: int = 1 << 20
    max_recipients: int = 64
    max_context_entries: int = 256
    max_chunk_size: int = MAX_CHUNK_SIZE


DEFAULT_LIMITS = Limits()


def derive_keys(dek: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """Return ``(payload_key, mac_key)`` = HKDF-SHA256(DEK, salt=nonce, 'kmsenvelope/v1 keys')."""
    return hkdf_sha256_two_blocks(dek, nonce, _KDF_INFO)


def _string(value: str, width: int, what: str) -> bytes:
    """``value`` as UTF-8 after its length in ``width`` (1 or 2) big-endian bytes."""
    raw = value.encode("utf-8")
    if len(raw) >> (8 * width):
        raise ValueError(f"{what} is longer than {(1 << (8 * width)) - 1} bytes")
    return len(raw).to_bytes(width, "big") + raw


def encode_context(context: Mapping[str, str]) -> bytes:
    """Canonical encoding of an encryption context (sorted by UTF-8 key bytes)."""
    if not context:
        return _EMPTY_CONTEXT
    out = bytearray()
    items = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items())
    if len(items) > 0xFFFF:
        raise ValueError("an encryption context has at most 65535 entries")
    out += struct.pack(">H", len(items))
    for k, v in items:
        if not k or len(k) > 0xFFFF or len(v) > 0xFFFF:
            raise ValueError("context keys must be 1..65535 bytes and values at most 65535 bytes")
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return bytes(out)


def validate_context(context: Mapping[str, str] | None) -> Mapping[str, str]:
    """Check a caller's context (str keys and values, non-empty keys) and freeze it."""
    if context is None:
        return _NO_CONTEXT
    if not isinstance(context, Mapping):
        raise TypeError("context must be a mapping of str to str")
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("context keys and values must be str")
        if not k:
            raise ValueError("context keys must not be empty")
    return MappingProxyType(dict(context)) if context else _NO_CONTEXT


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed or to-be-written v1 header (everything before the payload)."""

    chunk_size: int
    nonce: bytes
    context: Mapping[str, str]
    recipients: tuple[WrappedKey, ...]
    mac: bytes = b""
    raw: bytes = field(default=b"", repr=False)  # authenticated bytes exactly as read
    # new_header's encoding, kept so that it is not computed twice (never copied by replace()).
    _encoded: bytes = field(default=b"", init=False, repr=False, compare=False)

    def body(self) -> bytes:
        """The header body bytes (what the length field counts)."""
        return _encode_body(self.chunk_size, self.nonce, self.context, self.recipients)

    def authenticated_bytes(self) -> bytes:
        """Magic, length and body: exactly the bytes the header MAC covers.

        For a parsed header these are the bytes as received, never a re-encoding.
        """
        if self.raw:
            return self.raw
        if self._encoded:
            return self._encoded
        body = self.body()
        return _PREFIX.pack(MAGIC, len(body)) + body

    def compute_mac(self, mac_key: bytes) -> bytes:
        """HMAC-SHA256 over ``authenticated_bytes()``."""
        return hmac_sha256(mac_key, self.authenticated_bytes())

    def verify_mac(self, mac_key: bytes) -> bool:
        """Constant-time check of the stored MAC."""
        return hmac.compare_digest(self.compute_mac(mac_key), self.mac)

    def encode(self, mac_key: bytes) -> bytes:
        """The full binary header: authenticated bytes followed by the MAC."""
        auth = self.authenticated_bytes()
        return auth + hmac_sha256(mac_key, auth)


def _truncated() -> MalformedEnvelopeError:
    return MalformedEnvelopeError("envelope header is truncated")


def _text(raw: bytes, what: str, encoding: str = "utf-8") -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        raise MalformedEnvelopeError(f"envelope header has an invalid {what}") from None


def parse_body(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Parse a header body (without magic/length/MAC), enforcing the limits."""
    return Header(*_parse_fields(bytes(body), limits))


_Fields = tuple[int, bytes, Mapping[str, str], tuple[WrappedKey, ...]]


def _parse_fields(body: bytes, limits: Limits) -> _Fields:
    """Chunk size, nonce, context and recipients of a header body.

    Every length is checked against the end of the body before it is used; every overrun is
    a format error. (Written out inline: this runs once per message.)
    """
    end = len(body)
    if end < 4:
        raise _truncated()
    chunk_size = int.from_bytes(body[:4], "big")
    if not MIN_CHUNK_SIZE <= chunk_size <= limits.max_chunk_size:
        raise MalformedEnvelopeError(
            f"envelope chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{limits.max_chunk_size}"
        )
    pos = 4 + NONCE_SIZE
    if pos + 2 > end:
        raise _truncated()
    nonce = body[4:pos]
    n_ctx = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if n_ctx > limits.max_context_entries:
        raise MalformedEnvelopeError(
            f"envelope has {n_ctx} context entries (limit {limits.max_context_entries})"
        )
    context: dict[str, str] = {}
    previous: bytes | None = None
    for _ in range(n_ctx):
        if pos + 2 > end:
            raise _truncated()
        stop = pos + 2 + ((body[pos] << 8) | body[pos + 1])
        if stop > end:
            raise _truncated()
        kraw = body[pos + 2 : stop]
        key = _text(kraw, "context key")
        if not kraw or (previous is not None and kraw <= previous):
            raise MalformedEnvelopeError("envelope context keys are empty, unsorted or repeated")
        previous = kraw
        if stop + 2 > end:
            raise _truncated()
        pos = stop + 2 + ((body[stop] << 8) | body[stop + 1])
        if pos > end:
            raise _truncated()
        context[key] = _text(body[stop + 2 : pos], "context value")
    if pos + 2 > end:
        raise _truncated()
    n_rec = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if n_rec == 0:
        raise MalformedEnvelopeError("envelope has no recipients")
    if n_rec > limits.max_recipients:
        raise MalformedEnvelopeError(
            f"envelope has {n_rec} recipients (limit {limits.max_recipients})"
        )
    recipients = []
    for _ in range(n_rec):
        # provider (u8 length, ASCII), key id (u16, UTF-8), algorithm (u8, ASCII)
        if pos + 1 > end:
            raise _truncated()
        stop = pos + 1 + body[pos]
        if stop > end:
            raise _truncated()
        provider = _text(body[pos + 1 : stop], "provider name", "ascii")
        if stop + 2 > end:
            raise _truncated()
        pos = stop + 2 + ((body[stop] << 8) | body[stop + 1])
        if pos > end:
            raise _truncated()
        key_id = _text(body[stop + 2 : pos], "key id")
        if pos + 1 > end:
            raise _truncated()
        stop = pos + 1 + body[pos]
        if stop > end:
            raise _truncated()
        algorithm = _text(body[pos + 1 : stop], "algorithm", "ascii")
        if stop + 1 > end:
            raise _truncated()
        n_params = body[stop]
        pos = stop + 1
        params: dict[str, str] = {}
        last_name: bytes | None = None
        for _ in range(n_params):
            if pos + 1 > end:
                raise _truncated()
            stop = pos + 1 + body[pos]
            if stop > end:
                raise _truncated()
            name_raw = body[pos + 1 : stop]
            if last_name is not None and name_raw <= last_name:
                raise MalformedEnvelopeError("envelope recipient params are unsorted or repeated")
            last_name = name_raw
            pname = _text(name_raw, "param name")
            if stop + 2 > end:
                raise _truncated()
            pos = stop + 2 + ((body[stop] << 8) | body[stop + 1])
            if pos > end:
                raise _truncated()
            params[pname] = _text(body[stop + 2 : pos], "param value")
        if pos + 2 > end:
            raise _truncated()
        stop = pos + 2 + ((body[pos] << 8) | body[pos + 1])
        if stop > end:
            raise _truncated()
        ciphertext = body[pos + 2 : stop]
        pos = stop
        try:
            if scheme_of(key_id) != provider:
                raise ValueError("scheme mismatch")
            recipients.append(
                WrappedKey(provider, key_id, algorithm, ciphertext, params or NO_PARAMS)
            )
        except ValueError:
            raise MalformedEnvelopeError("envelope recipient is malformed") from None
    if pos != end:
        raise MalformedEnvelopeError("envelope header has trailing bytes")
    return (
        chunk_size,
        nonce,
        MappingProxyType(context) if context else _NO_CONTEXT,
        tuple(recipients),
    )


def read_exact(src: BinaryIO, n: int) -> bytes:
    """Read exactly ``n`` bytes or raise a truncation error."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not r:
            raise MalformedEnvelopeError("envelope is truncated")
        got += r
    return bytes(buf)


def _body_length(head: bytes, limits: Limits) -> int:
    """Check magic, version and length prefix; the body length, within ``limits``."""
    if len(head) < len(MAGIC) or head[: len(MAGIC) - 1] != MAGIC[:-1]:
        raise MalformedEnvelopeError(
            "input is not a kmsenvelope envelope (no 'KMSENV' marker at the start)"
        )
    if head[len(MAGIC) - 1] != MAGIC[-1]:
        raise MalformedEnvelopeError(
            f"unsupported envelope format version {head[len(MAGIC) - 1]} (this reader knows 1)"
        )
    if len(head) < _PREFIX.size:
        raise MalformedEnvelopeError("envelope header is truncated")
    _, body_len = _PREFIX.unpack(head)
    if body_len > limits.max_header_size:
        raise MalformedEnvelopeError(
            f"envelope header is {body_len} bytes (limit {limits.max_header_size})"
        )
    return int(body_len)


def read_header(src: BinaryIO, limits: Limits = DEFAULT_LIMITS) -> tuple[Header, int]:
    """Read and parse a binary header from ``src``; return it and its size in bytes.

    The length field is checked against ``limits.max_header_size`` before allocating.
    """
    head = src.read(_PREFIX.size)
    body_len = _body_length(head, limits)
    body = read_exact(src, body_len)
    mac = read_exact(src, MAC_SIZE)
    header = Header(*_parse_fields(body, limits), mac, head + body)
    return header, _PREFIX.size + body_len + MAC_SIZE


def parse_header(
    data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
) -> tuple[Header, int]:
    """:func:`read_header` for an envelope already in memory (same checks, same errors)."""
    head = bytes(data[: _PREFIX.size])
    body_len = _body_length(head, limits)
    end = _PREFIX.size + body_len
    size = end + MAC_SIZE
    if len(data) < size:
        raise MalformedEnvelopeError("envelope is truncated")
    authenticated = bytes(data[:end])
    fields = _parse_fields(authenticated[_PREFIX.size :], limits)
    return Header(*fields, bytes(data[end:size]), authenticated), size


def check_chunk_size(chunk_size: int) -> None:
    """Writers accept chunk sizes from 16 bytes to 16 MiB."""
    if not isinstance(chunk_size, int) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk_size must be an integer from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes"
        )


def _encode_body(
    chunk_size: int,
    nonce: bytes,
    context: Mapping[str, str],
    recipients: Sequence[WrappedKey],
) -> bytes:
    """The header body bytes for these fields (section 5.3)."""
    parts = [
        chunk_size.to_bytes(4, "big"),
        nonce,
        encode_context(context),
        _U16.pack(len(recipients)),
    ]
    append = parts.append
    for r in recipients:
        append(_string(r.provider, 1, "provider name"))
        append(_string(r.key_id, 2, "key id"))
        append(_string(r.algorithm, 1, "algorithm"))
        if r.params:
            params = sorted(r.params.items())
            if len(params) > 0xFF:
                raise ValueError("a recipient may have at most 255 params")
            append(bytes((len(params),)))
            for k, v in params:
                append(_string(k, 1, "param name"))
                append(_string(v, 2, "param value"))
        else:
            append(b"\x00")
        if len(r.ciphertext) > 0xFFFF:
            raise ValueError("wrapped key is longer than 65535 bytes")
        append(len(r.ciphertext).to_bytes(2, "big"))
        append(r.ciphertext)
    return b"".join(parts)


def _check_new(
    chunk_size: int, context: Mapping[str, str], recipients: Sequence[WrappedKey]
) -> None:
    """Refuse fields that a v1 reader would reject (checked before writing)."""
    check_chunk_size(chunk_size)
    if not recipients:
        raise ValueError("an envelope needs at least one recipient")
    if len(recipients) > DEFAULT_LIMITS.max_recipients:
        raise ValueError(f"at most {DEFAULT_LIMITS.max_recipients} recipients")
    if len(context) > DEFAULT_LIMITS.max_context_entries:
        raise ValueError(
            f"an encryption context has at most {DEFAULT_LIMITS.max_context_entries} entries"
        )
    for r in recipients:
        if not (r.provider.isascii() and r.algorithm.isascii()):
            raise ValueError("provider and algorithm names must be ASCII")
        try:
            ok = scheme_of(r.key_id) == r.provider
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"recipient key id {r.key_id!r} does not use scheme {r.provider!r}")


def _prefixed(body: bytes) -> bytes:
    if len(body) > DEFAULT_LIMITS.max_header_size:
        raise ValueError(f"the header would exceed {DEFAULT_LIMITS.max_header_size} bytes")
    return _PREFIX.pack(MAGIC, len(body)) + body


def encode_new_header(
    chunk_size: int,
    nonce: bytes,
    context: Mapping[str, str],
    recipients: Sequence[WrappedKey],
) -> bytes:
    """``new_header(...).authenticated_bytes()`` without building a :class:`Header`: the
    prefix and body that the header MAC covers (one call per encrypted message)."""
    _check_new(chunk_size, context, recipients)
    return _prefixed(_encode_body(chunk_size, nonce, context, recipients))


def new_header(
    chunk_size: int,
    nonce: bytes,
    context: Mapping[str, str],
    recipients: Sequence[WrappedKey],
) -> Header:
    """Build a header for writing; refuse anything a v1 reader would reject."""
    _check_new(chunk_size, context, recipients)
    header = Header(chunk_size, nonce, MappingProxyType(dict(context)), tuple(recipients))
    object.__setattr__(header, "_encoded", _prefixed(header.body()))
    return header
