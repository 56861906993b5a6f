"""The data-key cache on the decrypt side: unwrapped data keys reused within the limits, never
at the cost of a check (trust policy, context, header MAC), counted through KEKs written to the
public protocol (no timings, no mocks of our own code)."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from kmsenvelope import (
    AuthenticationError,
    Engine,
    NoRecipientError,
    ProviderRegistry,
    WrappedKey,
)
from kmsenvelope.auditing import AuditTrail
from kmsenvelope.cache import DataKeyCache
from kmsenvelope.config import Config
from kmsenvelope.errors import UnwrapError
from kmsenvelope.hazmat import parse_header, seal
from kmsenvelope.memory import InMemoryKEK


class CountingKEK:
    """A KEK (the public protocol) over an in-process AES key that counts its calls and can
    be told to fail the next unwraps, or to answer them with a wrong key."""

    def __init__(self, key_id: str = "memory:counted", key: bytes | None = None) -> None:
        self.inner = InMemoryKEK(key or os.urandom(32), key_id.partition(":")[2])
        self.key_id = key_id
        self.wraps = 0
        self.unwraps = 0
        self.fail_next = 0
        self.garble_next = 0
        self._lock = threading.Lock()

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        with self._lock:
            self.wraps += 1
        w = self.inner.wrap(dek, context)
        return WrappedKey(self.key_id.partition(":")[0], self.key_id, w.algorithm, w.ciphertext)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        with self._lock:
            self.unwraps += 1
            if self.fail_next:
                self.fail_next -= 1
                raise UnwrapError(f"{self.key_id}: KMS said no (test)")
            if self.garble_next:
                self.garble_next -= 1
                return os.urandom(32)  # a provider that answers with the wrong key
        inner = WrappedKey("memory", self.inner.key_id, wrapped.algorithm, wrapped.ciphertext)
        return self.inner.unwrap(inner, context)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine_with(kek: CountingKEK, cache: DataKeyCache | None) -> Engine:
    return Engine(registry=ProviderRegistry(), config=Config(), keys=[kek], cache=cache)


def batch(kek: CountingKEK, count: int, context: Mapping[str, str] | None = None) -> list[bytes]:
    """``count`` envelopes that share one data key (sealed through an encrypting cache)."""
    writer = engine_with(kek, DataKeyCache(max_age=60, max_messages=10_000))
    blobs = [writer.encrypt(b"message %d" % i, [kek], context) for i in range(count)]
    assert kek.wraps == 1
    return blobs


def test_hits_avoid_provider_calls() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 10, {"app": "x"})
    cache = DataKeyCache(max_age=60, max_messages=100)
    reader = engine_with(kek, cache)
    for i, blob in enumerate(blobs):
        assert reader.decrypt(blob, {"app": "x"}) == b"message %d" % i
    assert kek.unwraps == 1
    stats = cache.stats
    assert (stats.unwrap_hits, stats.unwrap_misses, stats.entries) == (9, 1, 1)
    assert (stats.hits, stats.misses) == (0, 0)  # the encrypting side's counters
    # The compact form and a bytearray are the same envelopes: served from the cache too.
    writer = engine_with(kek, DataKeyCache(max_age=60, max_messages=100))
    armored = writer.encrypt(b"armored", [kek], {"app": "x"}, armor=True)
    assert reader.decrypt(armored.decode()) == b"armored"
    assert reader.decrypt(bytearray(blobs[0])) == b"message 0"
    assert kek.unwraps == 2  # one more: the armored one has a data key of its own


def test_without_a_cache_every_envelope_is_unwrapped() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 5)
    reader = engine_with(kek, None)
    for blob in blobs * 2:
        reader.decrypt(blob)
    assert kek.unwraps == 10


def test_envelopes_with_their_own_data_keys_all_miss() -> None:
    kek = CountingKEK()
    writer = engine_with(kek, None)
    blobs = [writer.encrypt(b"m", [kek]) for _ in range(5)]
    cache = DataKeyCache(max_age=60, max_messages=100)
    reader = engine_with(kek, cache)
    for blob in blobs:
        reader.decrypt(blob)
    assert kek.unwraps == 5
    assert (cache.stats.unwrap_hits, cache.stats.unwrap_misses) == (0, 5)


def test_max_messages_expires_and_wipes_the_entry() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 7)
    cache = DataKeyCache(max_age=60, max_messages=3)
    reader = engine_with(kek, cache)
    reader.decrypt(blobs[0])
    (entry,) = cache._entries.values()
    assert any(entry.dek)
    for blob in blobs[1:]:
        reader.decrypt(blob)
    assert kek.unwraps == 3  # envelopes 1-3, 4-6, 7
    assert not any(entry.dek)  # the first key, used up: overwritten with zeros
    assert cache.stats.expired == 2


def test_max_age_expires_and_wipes_the_entry() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 3)
    clock = Clock()
    cache = DataKeyCache(max_age=10, max_messages=100, clock=clock)
    reader = engine_with(kek, cache)
    reader.decrypt(blobs[0])
    (entry,) = cache._entries.values()
    clock.now += 9.9
    reader.decrypt(blobs[1])
    assert kek.unwraps == 1
    clock.now += 0.2  # 10.1 s after the key was unwrapped: the KMS is asked again
    reader.decrypt(blobs[2])
    assert kek.unwraps == 2
    assert not any(entry.dek)


def test_max_bytes_limits_what_one_cached_key_opens() -> None:
    kek = CountingKEK()
    writer = engine_with(kek, DataKeyCache(max_age=60, max_messages=100, max_bytes=1 << 20))
    small = [writer.encrypt(b"x" * 40, [kek]) for _ in range(3)]
    large = writer.encrypt(b"x" * 101, [kek])
    cache = DataKeyCache(max_age=60, max_messages=100, max_bytes=100)
    reader = engine_with(kek, cache)
    reader.decrypt(small[0])
    reader.decrypt(small[1])  # 80 plaintext bytes opened with this key
    assert kek.unwraps == 1
    reader.decrypt(small[2])  # would make 120 > 100: unwrapped again
    assert kek.unwraps == 2
    reader.decrypt(large)  # larger than the limit: never cached
    reader.decrypt(large)
    assert kek.unwraps == 4
    reader.decrypt(small[0])  # the entry of the second unwrap is still there (40 bytes)
    assert kek.unwraps == 4


def test_clear_and_eviction_wipe_the_keys() -> None:
    kek = CountingKEK()
    cache = DataKeyCache(max_age=60, max_messages=100, max_entries=2)
    reader = engine_with(kek, cache)
    writer = engine_with(kek, None)
    blobs = [writer.encrypt(b"m", [kek]) for _ in range(3)]
    reader.decrypt(blobs[0])
    (first,) = cache._entries.values()
    reader.decrypt(blobs[1])
    reader.decrypt(blobs[2])  # a third entry: the oldest is evicted
    assert cache.stats.entries == 2
    assert not any(first.dek)
    kept = list(cache._entries.values())
    cache.clear()
    assert all(not any(entry.dek) for entry in kept)
    assert cache.stats.entries == 0


def test_a_failed_unwrap_is_never_cached() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 3)
    cache = DataKeyCache(max_age=60, max_messages=100)
    reader = engine_with(kek, cache)
    kek.fail_next = 1
    with pytest.raises(NoRecipientError, match="KMS said no"):
        reader.decrypt(blobs[0])
    assert cache.stats.entries == 0
    kek.fail_next = 1
    with pytest.raises(NoRecipientError, match="KMS said no"):
        reader.decrypt(blobs[0])  # asked again: the failure was not remembered
    assert kek.unwraps == 2
    assert reader.decrypt(blobs[1]) == b"message 1"
    assert reader.decrypt(blobs[2]) == b"message 2"
    assert kek.unwraps == 3


def test_a_key_that_does_not_authenticate_the_header_is_never_cached() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 2)
    cache = DataKeyCache(max_age=60, max_messages=100)
    reader = engine_with(kek, cache)
    kek.garble_next = 1  # the provider answers with a wrong key: the header MAC fails
    with pytest.raises(AuthenticationError):
        reader.decrypt(blobs[0])
    assert cache.stats.entries == 0
    assert reader.decrypt(blobs[0]) == b"message 0"  # asked again, with the right answer
    assert reader.decrypt(blobs[1]) == b"message 1"
    assert kek.unwraps == 2


class TenantKEK(CountingKEK):
    """A KMS key whose policy lets it unwrap only for tenant ``a`` (like a grant constrained by
    encryption context) and that, like some providers, does not bind the context itself."""

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        return super().wrap(dek, {})

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if context.get("tenant") != "a":
            with self._lock:
                self.unwraps += 1
            raise UnwrapError(f"{self.key_id}: not allowed for this encryption context")
        return super().unwrap(wrapped, {})


def test_a_different_context_misses() -> None:
    kek = TenantKEK()
    dek = os.urandom(32)
    stanza = kek.wrap(dek, {})
    # Two envelopes with the very same wrapped key, under two contexts.
    for_a = seal(b"for a", [stanza], {"tenant": "a"}, dek=dek, nonce=os.urandom(16))
    for_b = seal(b"for b", [stanza], {"tenant": "b"}, dek=dek, nonce=os.urandom(16))
    cache = DataKeyCache(max_age=60, max_messages=100)
    reader = engine_with(kek, cache)
    assert reader.decrypt(for_a) == b"for a"
    assert reader.decrypt(for_a) == b"for a"
    assert kek.unwraps == 1
    with pytest.raises(NoRecipientError, match="not allowed for this encryption context"):
        reader.decrypt(for_b)  # the KMS is asked, and says no: the cached key is not used
    assert kek.unwraps == 2
    assert cache.stats.unwrap_hits == 1


class SharedKeys:
    """A provider plugin whose factory hands every engine the same KEK object per URI."""

    keks: dict[str, CountingKEK] = {}  # noqa: RUF012 - reset by the fixture

    def __call__(self, uri: str, settings: Mapping[str, Any], /) -> CountingKEK:
        if uri not in self.keks:
            self.keks[uri] = CountingKEK(uri)
        return self.keks[uri]


@pytest.fixture
def registry() -> ProviderRegistry:
    SharedKeys.keks = {}
    reg = ProviderRegistry()
    reg.register("test", SharedKeys())
    return reg


def test_a_key_the_engine_may_not_open_is_not_served_from_the_cache(
    registry: ProviderRegistry,
) -> None:
    cache = DataKeyCache(max_age=60, max_messages=100)
    trusting = Engine(registry=registry, config=Config(), allowed_keys=["test:*"], cache=cache)
    writer = Engine(
        registry=registry, config=Config(), cache=DataKeyCache(max_age=60, max_messages=9)
    )
    blobs = [writer.encrypt(b"m%d" % i, ["test:tenant-key"]) for i in range(3)]
    assert trusting.decrypt(blobs[0]) == b"m0"
    assert trusting.decrypt(blobs[1]) == b"m1"
    kek = SharedKeys.keks["test:tenant-key"]
    assert kek.unwraps == 1
    # Same cache, same KEK object, but this engine does not allow the key: refused, unopened.
    strict = Engine(registry=registry, config=Config(), allowed_keys=["other:*"], cache=cache)
    with pytest.raises(NoRecipientError, match="not in allowed_keys"):
        strict.decrypt(blobs[2])
    assert kek.unwraps == 1
    assert cache.stats.unwrap_hits == 1  # only the trusting engine's second envelope
    # An engine without the key at all (and a cache that holds it) cannot open either.
    other = engine_with(CountingKEK("memory:unrelated"), cache)
    with pytest.raises(NoRecipientError):
        other.decrypt(blobs[2])


def test_a_tampered_envelope_is_rejected_though_its_key_is_cached() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 2)
    cache = DataKeyCache(max_age=60, max_messages=100)
    reader = engine_with(kek, cache)
    assert reader.decrypt(blobs[0]) == b"message 0"
    _header, size = parse_header(blobs[1])
    # The chunk size (bytes 11-14) is covered by the header MAC alone: a one-chunk payload
    # decrypts the same under 2 MiB chunks, so only the MAC can tell.
    assert blobs[1][11:15] == (1 << 20).to_bytes(4, "big")
    bigger_chunks = blobs[1][:11] + (2 << 20).to_bytes(4, "big") + blobs[1][15:]
    bad_mac = blobs[1][: size - 1] + bytes([blobs[1][size - 1] ^ 1]) + blobs[1][size:]
    bad_payload = blobs[1][:-1] + bytes([blobs[1][-1] ^ 1])
    for tampered in (bigger_chunks, bad_mac, bad_payload):
        hits = cache.stats.unwrap_hits
        with pytest.raises(AuthenticationError):
            reader.decrypt(tampered)
        assert cache.stats.unwrap_hits == hits + 1  # the cached key was there, and used
    assert kek.unwraps == 1
    assert reader.decrypt(blobs[1]) == b"message 1"


def test_streams_and_unwrap_data_key_ask_the_provider() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 3)
    cache = DataKeyCache(max_age=60, max_messages=100)
    reader = engine_with(kek, cache)
    reader.decrypt(blobs[0])
    out = io.BytesIO()
    reader.decrypt_stream(io.BytesIO(blobs[1]), out)
    assert out.getvalue() == b"message 1"
    reader.unwrap_data_key(parse_header(blobs[2])[0])
    assert kek.unwraps == 3
    assert cache.stats.unwrap_misses == 1


def test_concurrent_decryption_within_the_limits() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 40)
    cache = DataKeyCache(max_age=60, max_messages=10)
    reader = engine_with(kek, cache)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        try:
            for i, blob in enumerate(blobs):
                assert reader.decrypt(blob) == b"message %d" % i
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats
    assert stats.unwrap_hits + stats.unwrap_misses == 160
    assert kek.unwraps == stats.unwrap_misses >= 16  # at most 10 envelopes per unwrap


class RecordingSink:
    """An audit sink (the public ``Sink`` protocol) that keeps every event."""

    name = "recording"

    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any, line: str) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_cache_hit_is_no_provider_call_and_no_audit_event() -> None:
    kek = CountingKEK()
    blobs = batch(kek, 4)
    sink = RecordingSink()
    reader = Engine(
        registry=ProviderRegistry(),
        config=Config(),
        keys=[kek],
        cache=DataKeyCache(max_age=60, max_messages=100),
        audit=AuditTrail([sink]),
    )
    for blob in blobs:
        reader.decrypt(blob)
    assert [(e.operation, e.outcome) for e in sink.events] == [("unwrap", "ok")]
    assert kek.unwraps == 1
