"""The local HSM daemon's wire protocol (version 1): length-prefixed binary frames on a Unix socket.

Every frame is a 4-byte big-endian body length, then the body. A **request** body is
``version (u8) | op (u8) | request id (u32) | fields``; a **response** body is
``version (u8) | status (u8) | request id (u32) | fields``. Field types:

- ``str``: u16 length + UTF-8 (strict: no surrogates, no NUL), at most ``MAX_STRING`` bytes;
- ``bytes``: u32 length + bytes, at most ``MAX_BLOB`` (``MAX_BACKUP`` for a backup);
- ``map``: u16 count + that many (``str`` key, ``str`` value) pairs, keys unique, at most
  ``MAX_CONTEXT_ENTRIES`` pairs (the envelope parser's limit), values up to ``MAX_VALUE`` bytes;
- ``u32``: a big-endian unsigned integer.

Requests (one key each: a batch is many pipelined requests, answered by request id):

====  =============  =================================================  =====================
op    name           fields                                             response fields
====  =============  =================================================  =====================
1     wrap           key uri, data key (32 bytes), context map          wrapped key (below)
2     unwrap         key uri, wrapped key, context map                  data key
3     info           key name                                           key info (JSON str)
4     list           --                                                 key list (JSON str)
5     create         key name, key type                                 key info
6     rotate         key name                                           key info
7     enable         key name                                           key info
8     disable        key name                                           key info
9     destroy        key name, version (u32)                            key info
10    backup         backup passphrase (str)                            backup file (bytes)
====  =============  =================================================  =====================

A wrapped key is ``provider str | key_id str | algorithm str | ciphertext bytes | params map``.
Status 0 is success; status 1 is an error: ``error class (str) | message (str)``, where the
class is one of ``ERROR_CLASSES``. A request id the server cannot read (a malformed frame) is
answered with id 0 and the connection is closed: a peer that breaks the protocol gets nothing
more. Frames are limited before anything is allocated: ``MAX_REQUEST`` bytes from a client,
``MAX_RESPONSE`` bytes from the daemon. Data keys and passphrases cross this socket only
between the daemon and a peer it checked; this module never logs or formats them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..errors import (
    AccessDeniedError,
    AuditLogError,
    AuditSinkError,
    ConfigError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    KeystoreError,
    KmsEnvelopeError,
    ProviderError,
    ProviderUnavailableError,
    UnwrapError,
)
from ..kek import WrappedKey

__all__ = [
    "ERROR_CLASSES",
    "MAX_REQUEST",
    "MAX_RESPONSE",
    "VERSION",
    "Op",
    "ProtocolError",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "error_response",
    "frame",
    "frame_length",
]

VERSION = 1
MAX_REQUEST = (1 << 20) + (64 << 10)
"""Largest request body: a context as large as an envelope header may carry, plus the rest."""
MAX_BACKUP = 16 << 20
MAX_RESPONSE = MAX_BACKUP + 4096
MAX_STRING = 4096
MAX_VALUE = 0xFFFF
MAX_BLOB = 16384
MAX_CONTEXT_ENTRIES = 256
MAX_MESSAGE = 1024
DEK_SIZE = 32
_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">BBI")
_U16 = struct.Struct(">H")


class ProtocolError(ProviderError):
    """A frame that breaks the wire protocol (the connection is closed after it)."""


class Op(IntEnum):
    """Request operations; the admin ones need an ``--admin-uid`` peer."""

    WRAP = 1
    UNWRAP = 2
    INFO = 3
    LIST = 4
    CREATE = 5
    ROTATE = 6
    ENABLE = 7
    DISABLE = 8
    DESTROY = 9
    BACKUP = 10


ADMIN_OPS = frozenset({Op.CREATE, Op.ROTATE, Op.ENABLE, Op.DISABLE, Op.DESTROY, Op.BACKUP})

ERROR_CLASSES: dict[str, type[KmsEnvelopeError]] = {
    cls.__name__: cls
    for cls in (
        AccessDeniedError,
        AuditLogError,
        AuditSinkError,
        ConfigError,
        KeyDestroyedError,
        KeyDisabledError,
        KeyNotFoundError,
        KeystoreError,
        ProviderError,
        ProviderUnavailableError,
        UnwrapError,
        ProtocolError,
    )
}
"""Error classes a response may name; any other is reported as ``ProviderError``."""


@dataclass(frozen=True, slots=True)
class Request:
    """One decoded request. ``args`` holds the op's fields in table order."""

    op: Op
    request_id: int
    args: tuple[Any, ...]

    def __repr__(self) -> str:  # never the data key or a passphrase
        return f"Request(op={self.op.name}, request_id={self.request_id})"


@dataclass(frozen=True, slots=True)
class Response:
    """One decoded response: ``value`` on success, else ``error`` (class name, message)."""

    request_id: int
    value: Any = None
    error: tuple[str, str] | None = None

    def __repr__(self) -> str:
        state = "ok" if self.error is None else f"error={self.error[0]}"
        return f"Response(request_id={self.request_id}, {state})"

    def raise_error(self) -> None:
        """Raise the error this response carries as its (allow-listed) exception class."""
        if self.error is not None:
            name, message = self.error
            raise ERROR_CLASSES.get(name, ProviderError)(message)


# -- encoding -------------------------------------------------------------------------------


def _str(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > MAX_STRING:
        raise ProtocolError(f"{what} is longer than {MAX_STRING} bytes")
    return _U16.pack(len(raw)) + raw


def _blob(value: bytes, limit: int = MAX_BLOB) -> bytes:
    if len(value) > limit:
        raise ProtocolError(f"a field is longer than {limit} bytes")
    return _LEN.pack(len(value)) + value


def _map(value: Mapping[str, str]) -> bytes:
    if len(value) > MAX_CONTEXT_ENTRIES:
        raise ProtocolError(f"a context has at most {MAX_CONTEXT_ENTRIES} entries")
    out = bytearray(_U16.pack(len(value)))
    for key, item in value.items():
        for text in (key, item):
            raw = text.encode("utf-8")
            if len(raw) > MAX_VALUE:
                raise ProtocolError(f"a context entry is longer than {MAX_VALUE} bytes")
            out += _U16.pack(len(raw)) + raw
    return bytes(out)


def _wrapped(w: WrappedKey) -> bytes:
    return (
        _str(w.provider, "provider")
        + _str(w.key_id, "key id")
        + _str(w.algorithm, "algorithm")
        + _blob(w.ciphertext)
        + _map(w.params)
    )


def frame(body: bytes) -> bytes:
    """``body`` with its length prefix."""
    return _LEN.pack(len(body)) + body


def encode_request(op: Op, request_id: int, *args: Any) -> bytes:
    """A framed request; ``args`` as the op's table row lists them."""
    out = bytearray(_HEAD.pack(VERSION, op, request_id))
    if op in (Op.WRAP, Op.UNWRAP):
        uri, payload, context = args
        out += _str(uri, "key uri")
        out += _blob(payload) if op == Op.WRAP else _wrapped(payload)
        out += _map(context)
    elif op == Op.LIST:
        pass
    elif op == Op.CREATE:
        out += _str(args[0], "key name") + _str(args[1], "key type")
    elif op == Op.DESTROY:
        out += _str(args[0], "key name") + _LEN.pack(args[1])
    elif op == Op.BACKUP:
        out += _str(args[0], "backup passphrase")
    else:
        out += _str(args[0], "key name")
    return frame(bytes(out))


def encode_response(request: Request, value: Any) -> bytes:
    """A framed success response to ``request`` carrying ``value``."""
    out = bytearray(_HEAD.pack(VERSION, 0, request.request_id))
    if request.op == Op.WRAP:
        out += _wrapped(value)
    elif request.op == Op.UNWRAP:
        out += _blob(value)
    elif request.op == Op.BACKUP:
        out += _blob(value, MAX_BACKUP)
    else:
        out += _LEN.pack(len(raw := json.dumps(value).encode())) + raw
    return frame(bytes(out))


def error_response(request_id: int, error: BaseException) -> bytes:
    """A framed error response: the nearest allow-listed class and a bounded message."""
    name = next(
        (c.__name__ for c in type(error).__mro__ if c.__name__ in ERROR_CLASSES), "ProviderError"
    )
    text = str(error).replace("\x00", "")
    message = text.encode("utf-8", "replace")[:MAX_MESSAGE].decode("utf-8", "ignore")
    return frame(
        _HEAD.pack(VERSION, 1, request_id) + _str(name, "error class") + _str(message, "message")
    )


# -- decoding (hostile input) ---------------------------------------------------------------


def frame_length(prefix: bytes, limit: int) -> int:
    """The body length a 4-byte prefix announces; ``ProtocolError`` above ``limit``."""
    length = int(_LEN.unpack(prefix)[0])
    if length < _HEAD.size or length > limit:
        raise ProtocolError(f"frame of {length} bytes is outside 6..{limit}")
    return length


class _Reader:
    """Bounded reads from one frame body; every overrun is a ``ProtocolError``."""

    def __init__(self, body: bytes) -> None:
        self._body = memoryview(body)
        self._pos = 0

    def take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._body):
            raise ProtocolError("frame ends inside a field")
        chunk = bytes(self._body[self._pos : end])
        self._pos = end
        return chunk

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_LEN.unpack(self.take(4))[0])

    def text(self, limit: int = MAX_STRING, *, empty: bool = False, nul: bool = False) -> str:
        size = self.u16()
        if size > limit:
            raise ProtocolError(f"a string field is longer than {limit} bytes")
        raw = self.take(size)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a string field is not UTF-8") from None
        if (not nul and "\x00" in value) or (not empty and not value):
            raise ProtocolError("a string field is empty or holds NUL")
        return value

    def blob(self, limit: int = MAX_BLOB) -> bytes:
        size = self.u32()
        if size > limit:
            raise ProtocolError(f"a bytes field is longer than {limit} bytes")
        return self.take(size)

    def mapping(self) -> dict[str, str]:
        count = self.u16()
        if count > MAX_CONTEXT_ENTRIES:
            raise ProtocolError(f"a context has more than {MAX_CONTEXT_ENTRIES} entries")
        out: dict[str, str] = {}
        for _ in range(count):
            key = self.text(MAX_VALUE, nul=True)  # as the envelope's context allows
            value = self.text(MAX_VALUE, empty=True, nul=True)
            if key in out:
                raise ProtocolError("a context names one key twice")
            out[key] = value
        return out

    def wrapped(self) -> WrappedKey:
        provider, key_id, algorithm = self.text(), self.text(), self.text()
        ciphertext, params = self.blob(), self.mapping()
        return WrappedKey(provider, key_id, algorithm, ciphertext, params)

    def json(self, limit: int) -> Any:
        raw = self.blob(limit)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise ProtocolError("a JSON field does not parse") from None

    def end(self) -> None:
        if self._pos != len(self._body):
            raise ProtocolError("frame has bytes after its last field")


def _version(reader: _Reader) -> tuple[int, int]:
    version, code, request_id = _HEAD.unpack(reader.take(_HEAD.size))
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    return code, request_id


def decode_request(body: bytes) -> Request:
    """Parse one request body (without its length prefix); ``ProtocolError`` if malformed."""
    reader = _Reader(body)
    code, request_id = _version(reader)
    try:
        op = Op(code)
    except ValueError:
        raise ProtocolError(f"unknown operation {code}") from None
    args: tuple[Any, ...]
    if op in (Op.WRAP, Op.UNWRAP):
        uri = reader.text()
        if op == Op.WRAP:
            dek = reader.blob()
            if len(dek) != DEK_SIZE:
                raise ProtocolError(f"a data key is {DEK_SIZE} bytes")
            payload: Any = dek
        else:
            payload = reader.wrapped()
        args = (uri, payload, reader.mapping())
    elif op == Op.LIST:
        args = ()
    elif op == Op.CREATE:
        args = (reader.text(), reader.text())
    elif op == Op.DESTROY:
        args = (reader.text(), reader.u32())
    elif op == Op.BACKUP:
        args = (reader.text(),)
    else:
        args = (reader.text(),)
    reader.end()
    return Request(op, request_id, args)


def decode_response(body: bytes, op: Op) -> Response:
    """Parse one response body to a request of ``op``; ``ProtocolError`` if malformed."""
    reader = _Reader(body)
    status, request_id = _version(reader)
    if status == 1:
        error = (reader.text(), reader.text(MAX_STRING, empty=True))
        reader.end()
        return Response(request_id, error=error)
    if status != 0:
        raise ProtocolError(f"unknown response status {status}")
    value: Any
    if op == Op.WRAP:
        value = reader.wrapped()
    elif op == Op.UNWRAP:
        value = reader.blob()
        if len(value) != DEK_SIZE:
            raise ProtocolError(f"a data key is {DEK_SIZE} bytes")
    elif op == Op.BACKUP:
        value = reader.blob(MAX_BACKUP)
    else:
        value = reader.json(MAX_BACKUP)
    reader.end()
    return Response(request_id, value)


def response_id(body: bytes) -> int:
    """The request id a response body answers (read before the body is decoded)."""
    if len(body) < _HEAD.size:
        raise ProtocolError("frame is shorter than its header")
    return int(_HEAD.unpack_from(body)[2])


def info_document(info: Any) -> dict[str, Any]:
    """A ``KeyInfo`` as the JSON the daemon sends (metadata only, never material)."""
    doc: dict[str, Any] = dict(info.to_json())
    doc["versions"] = [
        {"version": v.version, "state": v.state, "created": v.created, "destroyed": v.destroyed}
        for v in info.versions
    ]
    return doc


def key_info(doc: Any) -> Any:
    """The ``KeyInfo`` a daemon's JSON describes; ``ProtocolError`` if it is not one."""
    from .keystore import KEY_TYPES, KeyInfo, VersionInfo

    try:
        versions = tuple(
            VersionInfo(
                int(v["version"]),
                str(v["state"]),
                str(v["created"]),
                None if v.get("destroyed") is None else str(v["destroyed"]),
            )
            for v in doc["versions"]
        )
        if doc["type"] not in KEY_TYPES:
            raise ValueError
        return KeyInfo(
            name=str(doc["name"]),
            type=doc["type"],
            enabled=bool(doc["enabled"]),
            current=int(doc["current_version"]),
            created=str(doc["created"]),
            versions=versions,
            uuid=None if doc.get("uuid") is None else str(doc["uuid"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ProtocolError("the daemon sent key information this client cannot read") from None
