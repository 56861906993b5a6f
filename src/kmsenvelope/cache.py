"""An opt-in cache of data keys, for many small messages to the same recipients and context.

Without a cache every envelope gets a fresh data key (DEK) and one ``wrap`` call per recipient,
and every decryption one ``unwrap`` call: for a KMS or an HSM that call costs milliseconds, far
more than encrypting or decrypting a small message. ``Engine(cache=DataKeyCache(...))`` uses
the cache in both directions, for messages held in memory (``Engine.encrypt``/``decrypt``):

- **encrypting**, a DEK and its wrapped copies are reused for further messages to *the same
  KEK objects* with *the same encryption context*;
- **decrypting**, a data key once unwrapped is reused for further envelopes that carry *the
  same wrapped key* (provider, key id, algorithm, ciphertext and params) under *the same
  encryption context*, opened by *the same KEK object* -- exactly the envelopes that a cached
  DEK sealed.

Either kind of entry lasts until one of the limits is reached:

- ``max_age`` seconds since the DEK was created (or unwrapped),
- ``max_messages`` envelopes sealed (or opened) with it,
- ``max_bytes`` plaintext bytes sealed (or opened) with it (a message that would pass the limit
  gets a new DEK or a new unwrap; a message larger than the limit never uses the cache).

``max_entries`` bounds the entries of both kinds together: past it, the oldest is evicted.

The trade-off: one DEK then protects several messages, so one unwrapped DEK (a compromised
decrypting process, a leaked key) exposes all of them, and the KMS audit log shows one wrap,
and one unwrap per decrypting process, for many messages (so does the engine's own audit
trail: it records provider calls, and a cache hit makes none). Decrypting, the KMS is not asked
again within the limits: a key disabled, or a grant revoked, in the KMS still opens envelopes
whose data key this process already holds, for up to ``max_age`` seconds. The per-message
cryptography does not weaken: every envelope still has its own random 16-byte header nonce,
from which its payload key and header MAC key are derived (HKDF), so no two payloads ever share
an AES-GCM (key, nonce) pair, and decryption checks every envelope in full.

A cached key never lets a caller skip a check: a decrypting engine looks in the cache only for
a KEK it would have called anyway (the keys it was given, or a registry key that its
``allowed_keys``/trust policy allows), with the envelope's context (a different context misses),
and still verifies the header MAC (which commits to the key) and every payload chunk. An unwrap
that fails, or whose key does not authenticate the header, is never cached.

The DEK stays in this process's memory only, in a ``bytearray`` that is overwritten with zeros
when its entry expires or is evicted (best effort: Python may hold transient copies). Streams
(``encrypt_stream``, ``decrypt_stream``) and re-wrapping never use the cache: a stream's size is
not known in advance and one provider call is negligible next to a large payload, and a re-wrap
asks the KMS itself. The cache is off unless passed to an ``Engine``.
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
_Pairs = tuple[tuple[str, str], ...]
# Encrypting: (KEK object ids, context). Decrypting: (KEK object id, provider, key id,
# algorithm, wrapped ciphertext, params, context). The two shapes never compare equal.
_Key = tuple[tuple[int, ...], _Pairs] | tuple[int, str, str, str, bytes, _Pairs, _Pairs]


def _pairs(mapping: Mapping[str, str]) -> _Pairs:
    """A mapping as sorted ``(key, value)`` pairs: equal mappings, equal keys."""
    return tuple(sorted(mapping.items())) if mapping else ()


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made: encrypting, lookups served (``hits``) and lookups
    that needed a new DEK (``misses``); decrypting, unwraps saved (``unwrap_hits``) and unwraps
    made (``unwrap_misses``); entries of either kind dropped because a limit was reached (or
    evicted to stay under ``max_entries``), and entries held now."""

    hits: int
    misses: int
    expired: int
    entries: int
    unwrap_hits: int = 0
    unwrap_misses: int = 0


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
        self._unwrap_hits = 0
        self._unwrap_misses = 0

    def __repr__(self) -> str:
        return (
            f"DataKeyCache(max_age={self.max_age}, max_messages={self.max_messages}, "
            f"max_bytes={self.max_bytes}, entries={len(self._entries)})"
        )

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                self._expired,
                len(self._entries),
                self._unwrap_hits,
                self._unwrap_misses,
            )

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
        key: _Key = (tuple(map(id, keks)), _pairs(context))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if self._usable(entry, size):
                    self._hits += 1
                    wrapped = entry.wrapped  # read before _spend may drop the entry
                    return self._spend(key, entry, size), wrapped
                self._drop(key)
            self._misses += 1
        dek, wrapped_list = make()  # a KMS call: never under the lock
        wrapped = tuple(wrapped_list)
        if self.max_messages == 1:
            return dek, wrapped  # would expire at once
        self._add(key, _Entry(tuple(keks), dek, wrapped, self._clock()), size)
        return dek, wrapped

    # -- decrypting ---------------------------------------------------------------------------

    @staticmethod
    def _opened_key(kek: KeyEncryptionKey, wrapped: WrappedKey, context: Mapping[str, str]) -> _Key:
        # The entry holds the KEK, so its id() names it uniquely while the entry lives: a cache
        # shared by engines never opens an envelope for one that does not hold the key itself.
        return (
            id(kek),
            wrapped.provider,
            wrapped.key_id,
            wrapped.algorithm,
            wrapped.ciphertext,
            _pairs(wrapped.params),
            _pairs(context),
        )

    def opened_key(
        self,
        kek: KeyEncryptionKey,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        size: int,
    ) -> bytes | None:
        """The data key that ``kek`` unwrapped from exactly ``wrapped`` under exactly
        ``context``, if it is cached and within the limits (then counted as one more message
        of ``size`` plaintext bytes); None otherwise (the caller unwraps, then calls
        :meth:`keep_opened` once the key has authenticated the envelope)."""
        if size > self.max_bytes:  # can never be cached: leave the entries alone
            with self._lock:
                self._unwrap_misses += 1
            return None
        key = self._opened_key(kek, wrapped, context)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if self._usable(entry, size):
                    self._unwrap_hits += 1
                    return self._spend(key, entry, size)
                self._drop(key)
            self._unwrap_misses += 1
        return None

    def keep_opened(
        self,
        kek: KeyEncryptionKey,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        size: int,
        dek: bytes,
    ) -> None:
        """Cache ``dek``, which ``kek`` has just unwrapped from ``wrapped`` under ``context``
        and which authenticated an envelope of ``size`` plaintext bytes (its first message).
        Never call it for an unwrap that failed or a key that did not authenticate."""
        if size > self.max_bytes or self.max_messages == 1:
            return  # never cached, or would expire at once
        key = self._opened_key(kek, wrapped, context)
        self._add(key, _Entry((kek,), dek, (wrapped,), self._clock()), size)

    # -- entries ------------------------------------------------------------------------------

    def _add(self, key: _Key, fresh: _Entry, size: int) -> None:
        """Store ``fresh`` (its first message of ``size`` bytes) under ``key``, replacing (and
        wiping) what was there, evicting (and wiping) the oldest entries past ``max_entries``."""
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

    def _usable(self, entry: _Entry, size: int) -> bool:
        return (
            self._clock() - entry.created < self.max_age
            and entry.messages < self.max_messages
            and entry.bytes + size <= self.max_bytes
        )

    def _spend(self, key: _Key, entry: _Entry, size: int) -> bytes:
        """Count one more message of ``size`` bytes against ``entry`` (usable; lock held) and
        return a copy of its data key; the entry is dropped (wiped) once its messages are used
        up. Shared by both directions, so their limits cannot drift apart."""
        entry.messages += 1
        entry.bytes += size
        dek = bytes(entry.dek)
        if entry.messages >= self.max_messages:
            self._drop(key)
        return dek

    def _drop(self, key: _Key) -> None:
        entry = self._entries.pop(key)
        entry.wipe()
        self._expired += 1
