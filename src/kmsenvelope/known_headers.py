"""Headers seen before: the layouts of single-recipient headers an engine has parsed, so that
the next envelope of the same layout is read with one lookup and one comparison.

Envelopes written to one key under one context differ only in their nonce and wrapped key:
every other header byte -- magic, lengths, chunk size, context, recipient count, provider, key
id, algorithm, params -- is the same. A header whose bytes outside those two fields equal a
layout parsed (and checked, under the same limits) before has the same fields, so it needs no
parsing; the nonce and wrapped key are opaque bytes that any value of the right length fills.
Authentication is not affected: the header MAC still covers the whole header as received.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .format.header import MAGIC, NONCE_SIZE, Limits
from .format.keyschedule import MAC_SIZE
from .kek import NO_PARAMS, KeyEncryptionKey, WrappedKey

__all__ = ["KnownHeader", "KnownHeaders"]

NONCE_AT = len(MAGIC) + 4 + 4  # after the magic, the body length and the chunk size
NONCE_END = NONCE_AT + NONCE_SIZE
MAX_LAYOUTS = 64
"""Layouts remembered per engine (the memo is emptied when full: memory stays small whatever
headers arrive)."""
MAX_MIDDLE_BYTES = 1024
"""Longest context-and-recipient run remembered (longer headers are parsed every time)."""


@dataclass(frozen=True, slots=True)
class KnownHeader:
    """One single-recipient header layout, as parsed under ``limits``."""

    prefix: bytes
    """The header bytes before the nonce (magic, body length, chunk size)."""
    middle: bytes
    """The header bytes from the end of the nonce to the start of the wrapped key."""
    wrapped_at: int
    end: int
    """Where the header MAC starts (the authenticated bytes end)."""
    size: int
    """The header's size (where the payload starts)."""
    chunk_size: int
    context: Mapping[str, str]
    provider: str
    key_id: str
    algorithm: str
    own: tuple[KeyEncryptionKey, ...] | None
    """The engine's own KEKs to try for this recipient (None: look through the registry)."""
    limits: Limits


class KnownHeaders:
    """A bounded memo of header layouts, keyed by the bytes before the nonce. Thread-safe
    (one dict, read and written whole under the GIL; entries are immutable)."""

    def __init__(self) -> None:
        self._layouts: dict[bytes, KnownHeader] = {}
        self.last: KnownHeader | None = None
        """The layout found or learnt last: usually the next envelope's (a caller checks it
        first, as :meth:`find` would: ``prefix``, ``middle``, ``size`` and ``limits``)."""

    def find(self, blob: bytes, limits: Limits) -> KnownHeader | None:
        """The layout of ``blob``'s header if one was learnt under ``limits`` and ``blob`` is
        long enough to hold that header; None otherwise (parse it)."""
        known = self._layouts.get(blob[:NONCE_AT])
        if (
            known is not None
            and known.limits is limits
            and blob.startswith(known.middle, NONCE_END)
            and len(blob) >= known.size
        ):
            self.last = known
            return known
        return None

    def learn(
        self,
        blob: bytes,
        end: int,
        chunk_size: int,
        context: Mapping[str, str],
        recipient: WrappedKey,
        own: tuple[KeyEncryptionKey, ...] | None,
        limits: Limits,
    ) -> None:
        """Remember the layout of ``blob``'s header, which parsed under ``limits`` into these
        fields (one recipient, ``recipient``) with its MAC at ``end``."""
        if recipient.params is not NO_PARAMS:
            return  # params are sorted and re-encoded: not worth a layout
        wrapped_at = end - len(recipient.ciphertext)
        if not NONCE_END <= wrapped_at - 2 <= NONCE_END + MAX_MIDDLE_BYTES:
            return
        if blob[wrapped_at - 2 : wrapped_at] != len(recipient.ciphertext).to_bytes(2, "big"):
            return  # not the layout this reading of the header assumes: leave it
        layouts = self._layouts
        if len(layouts) >= MAX_LAYOUTS:
            layouts.clear()
        prefix = blob[:NONCE_AT]
        layouts[prefix] = self.last = KnownHeader(
            prefix,
            blob[NONCE_END:wrapped_at],
            wrapped_at,
            end,
            end + MAC_SIZE,
            chunk_size,
            context,
            recipient.provider,
            recipient.key_id,
            recipient.algorithm,
            own,
            limits,
        )
