"""The compact encoding: ``kmsenv1.`` and the binary envelope in unpadded base64url (section 8).

In memory (:func:`to_compact`, :func:`from_compact`) and as streams in constant memory
(:class:`ArmorWriter`, :class:`ArmorReader`, :func:`open_envelope_stream`, :func:`spool_compact`),
with the same rules for whitespace and invalid text either way.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import MalformedEnvelopeError

__all__ = [
    "COMPACT_PREFIX",
    "SPOOL_IN_MEMORY",
    "WHITESPACE",
    "ArmorReader",
    "ArmorWriter",
    "PrefixedReader",
    "from_compact",
    "open_envelope_stream",
    "spool_compact",
    "to_compact",
]

COMPACT_PREFIX = b"kmsenv1."
"""The compact form's prefix: it names the format version (``kmsenv2.`` would be version 2)."""
WHITESPACE = b" \t\r\n"
"""The only whitespace of the compact form (docs/format.md section 8): SP, HT, CR, LF."""
_WHITESPACE = WHITESPACE
SPOOL_IN_MEMORY = 16 << 20  # a decoded compact stream larger than this spills to a temp file


def to_compact(binary: bytes) -> bytes:
    """ASCII compact form of a binary envelope."""
    return COMPACT_PREFIX + base64.urlsafe_b64encode(binary).rstrip(b"=")


_ALPHABET = re.compile(rb"^[A-Za-z0-9_-]*$")


def _b64decode(text: bytes) -> bytes:
    """Strict unpadded base64url: only the URL-safe alphabet, canonical final group."""
    pad = -len(text) % 4
    if pad == 3 or not _ALPHABET.match(text):
        raise MalformedEnvelopeError("compact envelope is not valid unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + b"=" * pad)
    except (binascii.Error, ValueError):
        raise MalformedEnvelopeError("compact envelope is not valid base64url") from None
    if pad:  # the unused low bits of the final group must be zero
        tail = 4 - pad
        if base64.urlsafe_b64encode(data[-(tail - 1) :]).rstrip(b"=") != text[-tail:]:
            raise MalformedEnvelopeError("compact envelope has non-canonical base64url")
    return data


def from_compact(text: bytes | str) -> bytes:
    """Binary envelope from its compact form (ASCII whitespace is ignored)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    raw = raw.lstrip(_WHITESPACE)
    if not raw.startswith(COMPACT_PREFIX):
        raise MalformedEnvelopeError("input is not a compact kmsenvelope envelope")
    return _b64decode(raw[len(COMPACT_PREFIX) :].translate(None, _WHITESPACE))


class ArmorWriter:
    """Write-only file object: base64url-encodes everything written to it into ``dst``."""

    def __init__(self, dst: BinaryIO) -> None:
        self._dst = dst
        self._pending = b""
        dst.write(COMPACT_PREFIX)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        buf = self._pending + bytes(data)
        cut = len(buf) - len(buf) % 3
        if cut:
            self._dst.write(base64.urlsafe_b64encode(buf[:cut]))
        self._pending = buf[cut:]
        return len(data)

    def finish(self) -> None:
        """Flush the final partial group (unpadded) and a newline."""
        if self._pending:
            self._dst.write(base64.urlsafe_b64encode(self._pending).rstrip(b"="))
            self._pending = b""
        self._dst.write(b"\n")


class ArmorReader:
    """Read-only file object yielding the binary envelope inside a compact stream.

    ``src`` must be positioned just after the ``kmsenv1.`` prefix.
    """

    def __init__(self, src: BinaryIO, block: int = 1 << 20) -> None:
        self._src = src
        self._block = block - block % 4
        self._text = b""
        self._out = bytearray()
        self._eof = False

    def _fill(self, want: int) -> None:
        while len(self._out) < want and not self._eof:
            data = self._src.read(self._block)
            if not data:
                self._eof = True
                if self._text:
                    self._out += _b64decode(self._text)
                    self._text = b""
                break
            self._text += data.translate(None, _WHITESPACE)
            cut = len(self._text) - len(self._text) % 4
            if cut:
                self._out += _b64decode(self._text[:cut])
                self._text = self._text[cut:]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            self._fill(1 << 62)
            n = len(self._out)
        else:
            self._fill(n)
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def readinto(self, view: memoryview | bytearray) -> int:
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class PrefixedReader:
    """A reader that first returns ``head`` (bytes already consumed), then the rest of ``src``."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        self._head = head
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._src.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            if len(data) < n:
                data += self._src.read(n - len(data))
            return data
        return self._src.read(n)

    def readinto(self, view: memoryview | bytearray) -> int:
        if self._head:
            data = self.read(len(view))
            view[: len(data)] = data
            return len(data)
        readinto = getattr(self._src, "readinto", None)
        if readinto is not None:
            return int(readinto(view))
        data = self._src.read(len(view))
        view[: len(data)] = data
        return len(data)


def open_envelope_stream(src: BinaryIO) -> tuple[BinaryIO, str]:
    """Detect the encoding of the envelope in ``src``; return a binary reader and the encoding.

    Leading whitespace (SP, HT, CR, LF, any amount, as for in-memory input) is skipped before
    a compact envelope; a binary envelope starts at its first byte.
    """
    want = len(COMPACT_PREFIX)
    head = src.read(want)
    if head and head[0] in WHITESPACE:
        head = head.lstrip(WHITESPACE)
        while not head:
            block = src.read(4096)
            if not block:
                break
            head = block.lstrip(WHITESPACE)
        while 0 < len(head) < want:
            more = src.read(want - len(head))
            if not more:
                break
            head += more
        head, rest = head[:want], head[want:]
        if head != COMPACT_PREFIX:
            # Whitespace, then anything but the compact prefix: an envelope in neither form
            # (as for in-memory input, a binary envelope starts at its first byte).
            raise MalformedEnvelopeError("input is not a kmsenvelope envelope")
        if rest:  # read past the prefix while skipping whitespace: hand it back
            return ArmorReader(PrefixedReader(rest, src)), "compact"  # type: ignore[arg-type,return-value]
    if head == COMPACT_PREFIX:
        return ArmorReader(src), "compact"  # type: ignore[return-value]
    return PrefixedReader(head, src), "binary"  # type: ignore[return-value]


@contextlib.contextmanager
def spool_compact(reader: BinaryIO) -> Iterator[BinaryIO]:
    """Decode a whole compact stream first (raising ``MalformedEnvelopeError`` for invalid
    text), then yield the binary envelope, held in memory or, past 16 MiB, in an unnamed
    temporary file (ciphertext only). A streaming reader needs this to find every malformed
    input before any provider is called."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        while block := reader.read(1 << 20):
            spool.write(block)
        spool.seek(0)
        yield spool  # type: ignore[misc]
