"""The v1 header layout: one parser for bytes and streams, the encoder, limits, context rules.

The normative description is ``docs/format.md`` sections 5 and 9; this module follows it field
by field. Every length read from untrusted input is checked before it is used or allocated.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import BinaryIO, TypeVar, overload

from ..errors import MalformedEnvelopeError
from ..kek import NO_PARAMS, WrappedKey, checked_wrapped_key, scheme_of
from .keyschedule import MAC_SIZE, header_mac, verify_header_mac

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_LIMITS",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "NONCE_SIZE",
    "Header",
    "Limits",
    "check_chunk_size",
    "encode_context",
    "encode_new_header",
    "header_fields",
    "new_header",
    "parse_body",
    "parse_header",
    "read_header",
    "validate_context",
]

MAGIC = b"KMSENV\x01"  # 6-byte name + 1-byte format version
NONCE_SIZE = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 1 << 24
_PREFIX = struct.Struct(">7sI")  # magic, header body length
_FIXED = struct.Struct(">7sII16sH")  # the prefix, then chunk size, nonce, context entries
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


# -- the encryption context (section 5.4) ---------------------------------------------------


def encode_context(context: Mapping[str, str]) -> bytes:
    """Canonical encoding of an encryption context (sorted by UTF-8 key bytes)."""
    if not context:
        return _EMPTY_CONTEXT
    out = bytearray()
    items = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items())
    if len(items) > 0xFFFF:
        raise ValueError("an encryption context has at most 65535 entries")
    out += _U16.pack(len(items))
    for k, v in items:
        if not k or len(k) > 0xFFFF or len(v) > 0xFFFF:
            raise ValueError("context keys must be 1..65535 bytes and values at most 65535 bytes")
        out += _U16.pack(len(k)) + k + _U16.pack(len(v)) + v
    return bytes(out)


def validate_context(context: Mapping[str, str] | None) -> Mapping[str, str]:
    """Check a caller's context (str keys and values, non-empty keys) and freeze it."""
    if context is None or context is _NO_CONTEXT:
        return _NO_CONTEXT
    if not context and (type(context) is dict or type(context) is MappingProxyType):
        return _NO_CONTEXT  # the usual empty one, without the slower Mapping check below
    if not isinstance(context, Mapping):
        raise TypeError("context must be a mapping of str to str")
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("context keys and values must be str")
        if not k:
            raise ValueError("context keys must not be empty")
    return MappingProxyType(dict(context)) if context else _NO_CONTEXT


# -- the header ------------------------------------------------------------------------------


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
        return header_mac(mac_key, self.authenticated_bytes())

    def verify_mac(self, mac_key: bytes) -> bool:
        """Constant-time check of the stored MAC."""
        return verify_header_mac(mac_key, self.authenticated_bytes(), self.mac)

    def encode(self, mac_key: bytes) -> bytes:
        """The full binary header: authenticated bytes followed by the MAC."""
        auth = self.authenticated_bytes()
        return auth + header_mac(mac_key, auth)


# -- parsing ---------------------------------------------------------------------------------


def _truncated() -> MalformedEnvelopeError:
    """The error for a field that runs past the end of the header body."""
    return MalformedEnvelopeError("envelope header is truncated")


@overload
def _read_string(body: bytes, pos: int, width: int, *, end: int) -> tuple[bytes, int]: ...
@overload
def _read_string(
    body: bytes, pos: int, width: int, what: str, encoding: str = "utf-8", *, end: int
) -> tuple[str, int]: ...


def _read_string(
    body: bytes,
    pos: int,
    width: int,
    what: str | None = None,
    encoding: str = "utf-8",
    *,
    end: int,
) -> tuple[bytes | str, int]:
    """The ``str8`` or ``str16`` (``width`` 1 or 2) at ``pos`` and the position after it: its
    bytes, or its text when ``what`` names the field for the error. A string running past
    ``end`` (the end of the header body) is a truncation."""
    start = pos + width
    if start > end:
        raise _truncated()
    stop = start + (body[pos] if width == 1 else (body[pos] << 8) | body[pos + 1])
    if stop > end:
        raise _truncated()
    if what is None:
        return body[start:stop], stop
    try:
        return body[start:stop].decode(encoding), stop
    except UnicodeDecodeError:
        raise MalformedEnvelopeError(f"envelope header has an invalid {what}") from None


# Header fields that repeat from one envelope to the next (the context, each recipient's
# provider, key id and algorithm) are decoded and checked once, then remembered by their exact
# bytes: a later header with the same bytes gets the same (immutable) values without decoding
# them again. Bounded: fields longer than _MEMO_FIELD_BYTES are never remembered, and each memo
# is emptied when it reaches _MEMO_ENTRIES (whatever bytes envelopes carry, memory stays small).
# Only fields that parsed and checked without error are remembered, so the same bytes give the
# same header, or the same error, with or without the memo.
_MEMO_ENTRIES = 256
_MEMO_FIELD_BYTES = 1024
_V = TypeVar("_V")
_contexts: dict[bytes, Mapping[str, str]] = {}
_stanza_heads: dict[bytes, tuple[str, str, str]] = {}

HeaderFields = tuple[int, bytes, Mapping[str, str], tuple[WrappedKey, ...]]
"""``(chunk_size, nonce, context, recipients)``: a header body, parsed."""


def _remember(memo: dict[bytes, _V], raw: bytes, value: _V) -> None:
    if len(raw) <= _MEMO_FIELD_BYTES:
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        memo[raw] = value


def _context_end(buf: bytes, pos: int, end: int, count: int) -> int:
    """Where the ``count`` context entries at ``pos`` end, or -1 if they run past ``end``."""
    for _ in range(2 * count):  # a key, then a value: two str16 per entry
        if pos + 2 > end:
            return -1
        pos += 2 + ((buf[pos] << 8) | buf[pos + 1])
    return pos if pos <= end else -1


def _read_context(buf: bytes, pos: int, end: int, count: int) -> tuple[Mapping[str, str], int]:
    """The ``count`` context entries at ``pos`` (section 5.4) and the position after them."""
    stop = _context_end(buf, pos, end, count)
    if stop >= 0:
        known = _contexts.get(buf[pos:stop])
        if known is not None:
            return known, stop
    start = pos
    context: dict[str, str] = {}
    previous = ""
    for _ in range(count):
        key, pos = _read_string(buf, pos, 2, "context key", end=end)
        # UTF-8 keeps code point order: comparing the text compares the bytes (section 5.4).
        if key <= previous:
            raise MalformedEnvelopeError("envelope context keys are empty, unsorted or repeated")
        previous = key
        context[key], pos = _read_string(buf, pos, 2, "context value", end=end)
    frozen = MappingProxyType(context)
    _remember(_contexts, buf[start:pos], frozen)
    return frozen, pos


def _read_params(buf: bytes, pos: int, end: int) -> tuple[Mapping[str, str], int]:
    """A recipient's params (count byte, then sorted name/value pairs) and the position after."""
    if pos >= end:
        raise _truncated()
    count = buf[pos]
    pos += 1
    if not count:
        return NO_PARAMS, pos
    params: dict[str, str] = {}
    last_name: bytes | None = None
    for _ in range(count):
        name, pos = _read_string(buf, pos, 1, end=end)  # the order is checked before the text
        if last_name is not None and name <= last_name:
            raise MalformedEnvelopeError("envelope recipient params are unsorted or repeated")
        last_name = name
        params[_text(name, "param name")], pos = _read_string(buf, pos, 2, "param value", end=end)
    return MappingProxyType(params), pos


def _parse_fields(buf: bytes, pos: int, end: int, limits: Limits) -> HeaderFields:
    """The header body at ``buf[pos:end]`` (sections 5.3 to 5.5), parsed in place.

    Each count is checked against its limit before the first item it counts is read.
    """
    if end - pos < 4:
        raise _truncated()
    chunk_size = int.from_bytes(buf[pos : pos + 4], "big")
    if not MIN_CHUNK_SIZE <= chunk_size <= limits.max_chunk_size:
        raise MalformedEnvelopeError(
            f"envelope chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{limits.max_chunk_size}"
        )
    nonce_at = pos + 4
    pos = nonce_at + NONCE_SIZE
    if pos + 2 > end:
        raise _truncated()
    nonce = buf[nonce_at:pos]
    n_ctx = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    if n_ctx > limits.max_context_entries:
        raise MalformedEnvelopeError(
            f"envelope has {n_ctx} context entries (limit {limits.max_context_entries})"
        )
    context = _NO_CONTEXT
    if n_ctx:
        context, pos = _read_context(buf, pos, end, n_ctx)
    return chunk_size, nonce, context, _read_recipients(buf, pos, end, limits)


def _read_recipients(buf: bytes, pos: int, end: int, limits: Limits) -> tuple[WrappedKey, ...]:
    """The recipient count at ``pos``, the recipients (section 5.5) and nothing after them."""
    if pos + 2 > end:
        raise _truncated()
    n_rec = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    if n_rec == 0:
        raise MalformedEnvelopeError("envelope has no recipients")
    if n_rec > limits.max_recipients:
        raise MalformedEnvelopeError(
            f"envelope has {n_rec} recipients (limit {limits.max_recipients})"
        )
    recipients = []
    for _ in range(n_rec):
        start = pos
        # Where the provider, key id and algorithm end (-1: past the end of the body; then
        # they are read below, which raises the error for it).
        head_end = -1
        if pos < end:
            q = pos + 1 + buf[pos]
            if q + 2 <= end:
                q += 2 + ((buf[q] << 8) | buf[q + 1])
                if q < end:
                    q += 1 + buf[q]
                    if q <= end:
                        head_end = q
        known = _stanza_heads.get(buf[pos:head_end]) if head_end >= 0 else None
        if known is not None:
            provider, key_id, algorithm = known
            pos = head_end
        else:
            provider, pos = _read_string(buf, pos, 1, "provider name", "ascii", end=end)
            key_id, pos = _read_string(buf, pos, 2, "key id", end=end)
            algorithm, pos = _read_string(buf, pos, 1, "algorithm", "ascii", end=end)
        if pos < end and not buf[pos]:  # no params: the usual case
            params, pos = NO_PARAMS, pos + 1
        else:
            params, pos = _read_params(buf, pos, end)
        if pos + 2 > end:
            raise _truncated()
        stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
        if stop > end:
            raise _truncated()
        ciphertext = buf[pos + 2 : stop]
        pos = stop
        if known is not None:
            # A WrappedKey of fields checked when they were remembered (non-empty text, the
            # key id's scheme is the provider): built without checking them again.
            recipients.append(checked_wrapped_key(provider, key_id, algorithm, ciphertext, params))
            continue
        try:
            if scheme_of(key_id) != provider:
                raise ValueError("scheme mismatch")
            recipients.append(
                WrappedKey(provider, key_id, algorithm, ciphertext, params or NO_PARAMS)
            )
        except ValueError:
            raise MalformedEnvelopeError("envelope recipient is malformed") from None
        if head_end >= 0:
            _remember(_stanza_heads, buf[start:head_end], (provider, key_id, algorithm))
    if pos != end:
        raise MalformedEnvelopeError("envelope header has trailing bytes")
    return tuple(recipients)


def _parse_body(body: bytes, mac: bytes, raw: bytes, limits: Limits) -> Header:
    """The header with this body (sections 5.3 to 5.5), MAC and authenticated bytes."""
    return Header(*_parse_fields(body, 0, len(body), limits), mac, raw)


def _text(raw: bytes, what: str) -> str:
    """``raw`` as UTF-8 text; invalid UTF-8 is a format error naming the field."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEnvelopeError(f"envelope header has an invalid {what}") from None


def parse_body(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Parse a header body (without magic/length/MAC), enforcing the limits."""
    return _parse_body(bytes(body), b"", b"", limits)


def _body_length(head: bytes, limits: Limits) -> int:
    """Check magic, version and length prefix; the body length, within ``limits``."""
    if len(head) == _PREFIX.size and head.startswith(MAGIC):  # the usual case, checked first
        body_len = int.from_bytes(head[len(MAGIC) :], "big")
        if body_len <= limits.max_header_size:
            return body_len
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


def _parse(read: Callable[[int], bytes], limits: Limits) -> tuple[Header, int]:
    """The one header parser: prefix, then body (its length checked before it is read) and
    MAC. ``read(n)`` returns up to ``n`` bytes, fewer only at the end of the input."""
    head = read(_PREFIX.size)
    body_len = _body_length(head, limits)
    rest = read(body_len + MAC_SIZE)  # the body and the MAC
    if len(rest) < body_len + MAC_SIZE:
        raise MalformedEnvelopeError("envelope is truncated")
    body = rest[:body_len]
    header = _parse_body(body, rest[body_len:], head + body, limits)
    return header, _PREFIX.size + body_len + MAC_SIZE


class _View:
    """``read`` over a bytearray or memoryview: copies what is read, never the rest."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytearray | memoryview) -> None:
        self.data = data
        self.pos = 0

    def read(self, size: int) -> bytes:
        start = self.pos
        self.pos = start + size
        return bytes(self.data[start : self.pos])


def _read_fully(src: BinaryIO) -> Callable[[int], bytes]:
    """``read`` for ``src`` that returns fewer bytes than asked only at the end of the input."""
    if type(src) in _READS_FULLY:
        return src.read

    def read(size: int) -> bytes:
        data = bytes(src.read(size) or b"")  # None: a non-blocking stream has nothing yet
        while 0 < len(data) < size:
            more = src.read(size - len(data))
            if not more:
                break
            data += more
        return data

    return read


_READS_FULLY = (io.BytesIO, io.BufferedReader)  # their read(n) stops short only at the end


def header_fields(
    data: bytes, limits: Limits = DEFAULT_LIMITS
) -> tuple[int, bytes, Mapping[str, str], tuple[WrappedKey, ...], bytes, bytes, int]:
    """:func:`parse_header` for ``bytes``, parsed in place and without building a
    :class:`Header` (same checks, same errors): ``(chunk_size, nonce, context, recipients,
    mac, authenticated_bytes, header_size)``. For the engine's in-memory decryption."""
    if len(data) >= _FIXED.size:  # the checks of _body_length and _parse_fields up to the
        # context, all at once; anything unusual is left to them (for their error messages)
        magic, body_len, chunk_size, nonce, n_ctx = _FIXED.unpack_from(data)
        end = _PREFIX.size + body_len
        if (
            magic == MAGIC
            and _FIXED.size - _PREFIX.size <= body_len <= limits.max_header_size
            and len(data) >= end + MAC_SIZE
            and MIN_CHUNK_SIZE <= chunk_size <= limits.max_chunk_size
            and n_ctx <= limits.max_context_entries
        ):
            pos = _FIXED.size
            context = _NO_CONTEXT
            if n_ctx:
                context, pos = _read_context(data, pos, end, n_ctx)
            recipients = _read_recipients(data, pos, end, limits)
            size = end + MAC_SIZE
            return chunk_size, nonce, context, recipients, data[end:size], data[:end], size
    body_at = _PREFIX.size
    if data.startswith(MAGIC) and len(data) >= body_at:  # _body_length's usual case
        end = body_at + int.from_bytes(data[len(MAGIC) : body_at], "big")
        if end - body_at > limits.max_header_size:
            end = body_at + _body_length(data[:body_at], limits)  # raises
    else:
        end = body_at + _body_length(data[:body_at], limits)
    size = end + MAC_SIZE
    if len(data) < size:
        raise MalformedEnvelopeError("envelope is truncated")
    chunk_size, nonce, context, recipients = _parse_fields(data, body_at, end, limits)
    return chunk_size, nonce, context, recipients, data[end:size], data[:end], size


def parse_header(
    data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
) -> tuple[Header, int]:
    """Parse the binary header at the start of ``data``; return it and its size in bytes."""
    if isinstance(data, bytes):
        chunk_size, nonce, context, recipients, mac, raw, size = header_fields(data, limits)
        return Header(chunk_size, nonce, context, recipients, mac, raw), size
    return _parse(_View(data).read, limits)


def read_header(src: BinaryIO, limits: Limits = DEFAULT_LIMITS) -> tuple[Header, int]:
    """:func:`parse_header` for a stream: read the header from ``src`` (same checks, same
    errors), leaving ``src`` at the first payload byte."""
    return _parse(_read_fully(src), limits)


# -- encoding --------------------------------------------------------------------------------


def check_chunk_size(chunk_size: int) -> None:
    """Writers accept chunk sizes from 16 bytes to 16 MiB."""
    if not isinstance(chunk_size, int) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk_size must be an integer from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes"
        )


def _encode_string(value: str, width: int, what: str) -> bytes:
    """``value`` as UTF-8 after its length in ``width`` (1 or 2) big-endian bytes."""
    raw = value.encode("utf-8")
    if len(raw) >> (8 * width):
        raise ValueError(f"{what} is longer than {(1 << (8 * width)) - 1} bytes")
    return len(raw).to_bytes(width, "big") + raw


# The encoded provider, key id and algorithm of recipients that passed _check_new, by their
# text: a writer encrypts to the same few keys again and again. Bounded as the parser's memos.
_encoded_heads: dict[tuple[str, str, str], bytes] = {}


def _encode_body(
    chunk_size: int,
    nonce: bytes,
    context: Mapping[str, str],
    recipients: Sequence[WrappedKey],
    checked: bool = False,
) -> bytes:
    """The header body bytes for these fields (section 5.3); ``checked``: the recipients
    passed :func:`_check_new` (their encoded heads may then be remembered)."""
    parts = [
        chunk_size.to_bytes(4, "big"),
        nonce,
        encode_context(context),
        _U16.pack(len(recipients)),
    ]
    append = parts.append
    for r in recipients:
        names = (r.provider, r.key_id, r.algorithm)
        head = _encoded_heads.get(names)
        if head is None:
            head = (
                _encode_string(r.provider, 1, "provider name")
                + _encode_string(r.key_id, 2, "key id")
                + _encode_string(r.algorithm, 1, "algorithm")
            )
            if checked and len(head) <= _MEMO_FIELD_BYTES:
                if len(_encoded_heads) >= _MEMO_ENTRIES:
                    _encoded_heads.clear()
                _encoded_heads[names] = head
        append(head)
        if r.params:
            params = sorted(r.params.items())
            if len(params) > 0xFF:
                raise ValueError("a recipient may have at most 255 params")
            append(bytes((len(params),)))
            for k, v in params:
                append(_encode_string(k, 1, "param name"))
                append(_encode_string(v, 2, "param value"))
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
        if (r.provider, r.key_id, r.algorithm) in _encoded_heads:
            continue  # checked (and encoded) before
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


# The bytes before and after the nonce of a one-recipient header with no context and no
# params, by key id: (before, after, provider, algorithm, wrapped-key length, chunk size) of
# the last one written, filled only with recipients already checked (their encoded head is
# in _encoded_heads). Bounded likewise.
_empty_context_layouts: dict[str, tuple[bytes, bytes, str, str, int, int]] = {}


def encode_new_header(
    chunk_size: int,
    nonce: bytes,
    context: Mapping[str, str],
    recipients: Sequence[WrappedKey],
) -> bytes:
    """``new_header(...).authenticated_bytes()`` without building a :class:`Header`: the
    prefix and body that the header MAC covers (one call per encrypted message)."""
    if len(recipients) == 1:  # the usual case: one recipient, no params, checked before
        r = recipients[0]
        wrapped = r.ciphertext
        if not context and r.params is NO_PARAMS:
            # The same key id, provider, algorithm, wrapped-key length and chunk size as a
            # header written before, no context: the bytes around the nonce are that header's.
            layout = _empty_context_layouts.get(r.key_id)
            if (
                layout is not None
                and layout[2] == r.provider
                and layout[3] == r.algorithm
                and layout[4] == len(wrapped)
                and layout[5] == chunk_size
                and type(chunk_size) is int
                and len(nonce) == NONCE_SIZE
            ):
                return layout[0] + nonce + layout[1] + wrapped
        head = _encoded_heads.get((r.provider, r.key_id, r.algorithm))
        if (
            head is not None
            and not r.params
            and type(chunk_size) is int
            and MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
            and len(wrapped) <= 0xFFFF
            and len(context) <= DEFAULT_LIMITS.max_context_entries
        ):
            encoded_context = encode_context(context)
            # chunk size 4 + nonce + context + recipient count 2 + head + no params 1 + length 2
            length = 9 + len(nonce) + len(encoded_context) + len(head) + len(wrapped)
            if length <= DEFAULT_LIMITS.max_header_size:
                before = MAGIC + length.to_bytes(4, "big") + chunk_size.to_bytes(4, "big")
                after = b"".join(
                    (encoded_context, b"\x00\x01", head, b"\x00", len(wrapped).to_bytes(2, "big"))
                )
                if not context and r.params is NO_PARAMS and len(nonce) == NONCE_SIZE:
                    if len(_empty_context_layouts) >= _MEMO_ENTRIES:
                        _empty_context_layouts.clear()
                    _empty_context_layouts[r.key_id] = (
                        before,
                        after,
                        r.provider,
                        r.algorithm,
                        len(wrapped),
                        chunk_size,
                    )
                return before + nonce + after + wrapped
    _check_new(chunk_size, context, recipients)
    return _prefixed(_encode_body(chunk_size, nonce, context, recipients, checked=True))


def new_header(
    chunk_size: int,
    nonce: bytes,
    context: Mapping[str, str],
    recipients: Sequence[WrappedKey],
) -> Header:
    """Build a header for writing; refuse anything a v1 reader would reject."""
    _check_new(chunk_size, context, recipients)
    header = Header(chunk_size, nonce, MappingProxyType(dict(context)), tuple(recipients))
    body = _encode_body(chunk_size, nonce, context, recipients, checked=True)
    object.__setattr__(header, "_encoded", _prefixed(body))
    return header
