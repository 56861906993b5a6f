"""The store protocol: where envelopes live (files, database rows, object stores)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

__all__ = ["EnvelopeStore", "ItemSkipped", "StoredItem", "VersionedStore", "Writer"]

Writer = Callable[[BinaryIO], None]
"""Writes the complete new content of an item into the binary stream it is given."""


class ItemSkipped(Exception):
    """Raised by :meth:`EnvelopeStore.read` for an item the job must leave alone (for example a
    symbolic link met in a directory walk); the message is the reason the report gives."""


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item opened for reading: its content stream and an opaque version token.

    The caller closes ``stream``. ``version`` changes whenever the item's content changes;
    ``EnvelopeStore.write`` uses it for the conditional write.
    """

    stream: BinaryIO
    version: str


@runtime_checkable
class EnvelopeStore(Protocol):
    """List items, read one, and replace one atomically if nobody changed it meanwhile."""

    def list(self) -> Iterable[str]:
        """Keys of every item to consider (envelopes or not), in a stable order."""
        ...

    def read(self, key: str) -> StoredItem:
        """Open ``key`` for reading (or raise :class:`ItemSkipped` to leave it alone)."""
        ...

    def write(self, key: str, version: str, writer: Writer) -> bool:
        """Replace ``key`` with what ``writer`` writes, atomically, only if it is still at
        ``version``. Return False (and change nothing) if it changed since it was read."""
        ...


@runtime_checkable
class VersionedStore(EnvelopeStore, Protocol):
    """A store that also tells the version token of what it wrote (optional; the built-in
    stores do). The journal records it, so a resumed job skips a migrated item only while it
    stays unchanged; without it, a resumed job reads the item's header again."""

    def pop_written_version(self, key: str) -> str | None:
        """The version token of what the last successful ``write(key, …)`` wrote, once (then
        forgotten); None if unknown."""
        ...
