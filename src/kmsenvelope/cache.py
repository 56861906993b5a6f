"""An opt-in cache of data keys, for many small messages to the same recipients and context.

Without a cache every envelope gets a fresh data key (DEK) and one ``wrap`` call per recipient:
for a KMS or an HSM that call costs milliseconds, far more than encrypting a small message.
With ``Engine(cache=DataKeyCache(...))``, ``Engine.encrypt`` reuses a DEK and its wrapped copies
for further messages to *the same KEK objects* with *the same encryption context*, until one
of the limits is reached:

- ``max_age`` seconds since the DEK was created,
- ``max_messages`` envelopes sealed with it,
- ``max_bytes`` plaintext bytes sealed with it (a message that would pass the limit gets a new
  DEK; a message larger than the limit is never cached).

The trade-off: one DEK then protects several messages, so one unwrapped DEK (a compromised
decrypting process, a leaked key) exposes all of them, and the KMS audit log shows one wrap
for many messages. The per-message cryptography does not weaken: every envelope still has its
own random 16-byte header nonce, from which its payload key and header MAC key are derived
(HKDF), so no two payloads ever share an AES-GCM (key, nonce) pair. Decryption is unchanged
(a cached DEK yields ordinary envelopes).

The DEK stays in this process's memory only, in a ``bytearray`` that is overwritten with zeros
when its entry expires or is evicted (best effort: Python may hold transient copies). Streams
(``encrypt_stream``) never use the cache: their size is not known in advance, and one wrap call
is negligible next to a large payload. The cache is off unless passed to an ``Engine``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .kek import KeyEncryptionKey, WrappedKey

__all__ = ["CacheStats", "DataKeyCache"]

Clock = Callable[[], float]
_Key = tuple[tuple[int, ...], tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made: lookups served, lookups that needed a new DEK, and
    entries dropped because a limit was reached (or evicted to stay under ``max_entries``)."""

    hits: int
    misses: int
    expired: int
    entries: int


class _Entry:
    __slots__ = ("bytes", "created", "dek", "keks", "messages", "wrapped")

    def __init__(
        self,
        keks: tuple[KeyEncryptionKey, ...],
        dek: bytes,
        wrapped: tuple[WrappedKey, ...],
        created: float,
    ) -> None:
        self.keks = keks  # held so that their id()s cannot be reused while the entry lives
        self.dek = bytearray(dek)
        self.wrapped = wrapped
        self.created = created
        self.messages = 0
        self.bytes = 0

    def wipe(self) -> None:
        self.dek[:] = bytes(len(self.dek))


class DataKeyCache:
    """Reuse a wrapped data key within limits; thread-safe. See the module documentation."""

    def __init__(
        self,
        *,
        max_age: float,
        max_messages: int,
        max_bytes: int = 1 << 30,
        max_entries: int = 256,
        clock: Clock = time.monotonic,
    ) -> None:
        if not (isinstance(max_age, int | float) and max_age > 0 and math.isfinite(max_age)):
            raise ValueError("max_age must be a positive number of seconds")
        for name, value in (
            ("max_messages", max_messages),
            ("max_bytes", max_bytes),
            ("max_entries", max_entries),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer")
        self.max_age = float(max_age)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._expired = 0

    def __repr__(self) -> str:
        return (
            f"DataKeyCache(max_age={self.max_age}, max_messages={self.max_messages}, "
            f"max_bytes={self.max_bytes}, entries={len(self._entries)})"
        )

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._expired, len(self._entries))

    def clear(self) -> None:
        """Drop (and wipe) every cached DEK."""
        with self._lock:
            for entry in self._entries.values():
                entry.wipe()
            self._entries.clear()

    def data_key(
        self,
        keks: Sequence[KeyEncryptionKey],
        context: Mapping[str, str],
        size: int,
        make: Callable[[], tuple[bytes, Sequence[WrappedKey]]],
    ) -> tuple[bytes, tuple[WrappedKey, ...]]:
        """The ``(dek, wrapped_keys)`` for one message of ``size`` plaintext bytes to ``keks``
        under ``context``: a cached one within the limits, else ``make()`` (a fresh DEK, wrapped
        for every KEK), cached for the next messages."""
        if size > self.max_bytes:  # can never be cached: leave the entries alone
            with self._lock:
                self._misses += 1
            dek, wrapped_list = make()
            return dek, tuple(wrapped_list)
        # The entry holds the KEK objects, so their id()s name them uniquely while it lives.
        key: _Key = (tuple(map(id, keks)), tuple(sorted(context.items())) if context else ())
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if self._usable(entry, size):
                    entry.messages += 1
                    entry.bytes += size
                    self._hits += 1
                    dek = bytes(entry.dek)
                    wrapped = entry.wrapped
                    if entry.messages >= self.max_messages:
                        self._drop(key)
                    return dek, wrapped
                self._drop(key)
            self._misses += 1
        dek, wrapped_list = make()  # a KMS call: never under the lock
        wrapped = tuple(wrapped_list)
        if self.max_messages == 1:
            return dek, wrapped  # would expire at once
        fresh = _Entry(tuple(keks), dek, wrapped, self._clock())
        fresh.messages, fresh.bytes = 1, size
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                old.wipe()
            self._entries[key] = fresh
            while len(self._entries) > self.max_entries:
                _key, evicted = self._entries.popitem(last=False)
                evicted.wipe()
                self._expired += 1
        return dek, wrapped

    def _usable(self, entry: _Entry, size: int) -> bool:
        return (
            self._clock() - entry.created < self.max_age
            and entry.messages < self.max_messages
            and entry.bytes + size <= self.max_bytes
        )

    def _drop(self, key: _Key) -> None:
        entry = self._entries.pop(key)
        entry.wipe()
        self._expired += 1
