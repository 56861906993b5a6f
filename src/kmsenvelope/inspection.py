"""What an envelope's header tells without any key: ``EnvelopeInfo`` and ``inspect_envelope``."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .format.chunks import payload_length
from .format.compact import COMPACT_PREFIX, WHITESPACE, from_compact, open_envelope_stream
from .format.header import DEFAULT_LIMITS, Header, Limits, read_header
from .kek import WrappedKey
from .pipeline import tell_or_none

__all__ = ["EnvelopeInfo", "inspect_envelope"]

_SHOWN = ("format_version", "encoding", "chunk_size", "header_size", "payload_length")
"""The plain fields of :class:`EnvelopeInfo`, in the order ``to_json`` gives them."""


@dataclass(frozen=True, slots=True)
class EnvelopeInfo:
    """What ``inspect`` can tell about an envelope without any key."""

    format_version: int
    encoding: str
    chunk_size: int
    context: Mapping[str, str]
    recipients: tuple[WrappedKey, ...]
    header_size: int
    payload_length: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (wrapped key bytes are omitted: they are opaque)."""
        doc = {name: getattr(self, name) for name in _SHOWN}
        doc["context"] = dict(self.context)
        doc["recipients"] = [_recipient_json(r) for r in self.recipients]
        return doc


def _recipient_json(recipient: WrappedKey) -> dict[str, Any]:
    """One recipient stanza for ``to_json``: who wrapped the key, and how, but not the bytes."""
    doc: dict[str, Any] = {
        name: getattr(recipient, name) for name in ("provider", "key_id", "algorithm")
    }
    doc["params"] = dict(recipient.params)
    doc["wrapped_key_size"] = len(recipient.ciphertext)
    return doc


def inspect_envelope(
    blob_or_file: bytes | bytearray | memoryview | str | BinaryIO,
    limits: Limits = DEFAULT_LIMITS,
) -> EnvelopeInfo:
    """Parse an envelope header (binary or compact, bytes or file) without any key."""
    if isinstance(blob_or_file, str | bytes | bytearray | memoryview):
        raw = (
            blob_or_file.encode("ascii", "replace")
            if isinstance(blob_or_file, str)
            else bytes(blob_or_file)
        )
        encoding = "binary"
        if raw.lstrip(WHITESPACE).startswith(COMPACT_PREFIX):
            raw = from_compact(raw)
            encoding = "compact"
        header, size = read_header(io.BytesIO(raw), limits)
        length = payload_length(len(raw) - size, header.chunk_size)
        return _info(header, encoding, size, length)
    src = blob_or_file
    start = tell_or_none(src)
    reader, encoding = open_envelope_stream(src)
    header, size = read_header(reader, limits)
    length = None
    if encoding == "compact":
        remaining = 0
        while block := reader.read(1 << 20):
            remaining += len(block)
        length = payload_length(remaining, header.chunk_size)
    elif start is not None:
        try:
            end = src.seek(0, io.SEEK_END)
            length = payload_length(end - start - size, header.chunk_size)
        except (OSError, ValueError):
            length = None
    return _info(header, encoding, size, length)


def _info(header: Header, encoding: str, size: int, length: int | None) -> EnvelopeInfo:
    return EnvelopeInfo(
        1, encoding, header.chunk_size, header.context, header.recipients, size, length
    )
