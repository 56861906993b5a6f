"""The opt-in data-key cache: counted through a KEK that counts its wrap calls (no timings)."""

from __future__ import annotations

import io
import threading
from collections import Counter
from collections.abc import Mapping

import pytest

from kmsenvelope import Engine, ProviderRegistry, WrappedKey
from kmsenvelope.cache import DataKeyCache
from kmsenvelope.config import Config
from kmsenvelope.hazmat import parse_header
from kmsenvelope.memory import InMemoryKEK


class CountingKEK:
    """An InMemoryKEK that counts wrap and unwrap calls (thread-safe)."""

    def __init__(self, name: str = "counted") -> None:
        self.inner = InMemoryKEK.generate(name)
        self.wraps = 0
        self.unwraps = 0
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        with self._lock:
            self.wraps += 1
        return self.inner.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        with self._lock:
            self.unwraps += 1
        return self.inner.unwrap(wrapped, context)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine_with(*keks: CountingKEK, cache: DataKeyCache | None = None) -> Engine:
    return Engine(registry=ProviderRegistry(), config=Config(), keys=keks, cache=cache)


def dek_of(engine: Engine, blob: bytes) -> bytes:
    header, _ = parse_header(blob)
    return engine.unwrap_data_key(header)


def test_off_by_default() -> None:
    kek = CountingKEK()
    engine = engine_with(kek)
    assert engine.data_key_cache is None
    blobs = [engine.encrypt(b"m", [kek]) for _ in range(5)]
    assert kek.wraps == 5
    assert len({dek_of(engine, b) for b in blobs}) == 5


def test_hits_and_misses_are_counted() -> None:
    kek = CountingKEK()
    cache = DataKeyCache(max_age=60, max_messages=100)
    engine = engine_with(kek, cache=cache)
    blobs = [engine.encrypt(b"message %d" % i, [kek]) for i in range(10)]
    assert kek.wraps == 1
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.entries) == (9, 1, 1)
    assert len({dek_of(engine, b) for b in blobs}) == 1  # one DEK for all ten


def test_decrypt_of_cached_key_envelopes() -> None:
    kek = CountingKEK()
    engine = engine_with(kek, cache=DataKeyCache(max_age=60, max_messages=100))
    blobs = [engine.encrypt(b"message %d" % i, [kek], {"app": "x"}) for i in range(5)]
    plain_engine = engine_with(kek)  # no cache: ordinary envelopes
    for i, blob in enumerate(blobs):
        assert plain_engine.decrypt(blob, {"app": "x"}) == b"message %d" % i
        assert engine.decrypt(blob) == b"message %d" % i
    armored = engine.encrypt(b"armored", [kek], {"app": "x"}, armor=True)
    assert plain_engine.decrypt(armored.decode()) == b"armored"


def test_nonces_and_payload_keys_are_distinct() -> None:
    kek = CountingKEK()
    engine = engine_with(kek, cache=DataKeyCache(max_age=60, max_messages=1000))
    blobs = [engine.encrypt(b"same plaintext", [kek]) for _ in range(200)]
    nonces = {parse_header(b)[0].nonce for b in blobs}
    assert len(nonces) == 200
    payloads = {b[parse_header(b)[1] :] for b in blobs}
    assert len(payloads) == 200  # same DEK and plaintext, yet every payload differs
    assert kek.wraps == 1


def test_max_messages_expires_the_entry() -> None:
    kek = CountingKEK()
    cache = DataKeyCache(max_age=60, max_messages=3)
    engine = engine_with(kek, cache=cache)
    blobs = [engine.encrypt(b"m", [kek]) for _ in range(7)]
    assert kek.wraps == 3  # messages 1-3, 4-6, 7
    deks = Counter(dek_of(engine, b) for b in blobs)
    assert sorted(deks.values()) == [1, 3, 3]
    assert cache.stats.expired == 2


def test_max_age_expires_the_entry() -> None:
    kek = CountingKEK()
    clock = Clock()
    engine = engine_with(kek, cache=DataKeyCache(max_age=10, max_messages=100, clock=clock))
    first = engine.encrypt(b"a", [kek])
    clock.now += 9.9
    second = engine.encrypt(b"b", [kek])
    assert kek.wraps == 1
    clock.now += 0.2  # 10.1 s after the DEK was made
    third = engine.encrypt(b"c", [kek])
    assert kek.wraps == 2
    assert dek_of(engine, first) == dek_of(engine, second) != dek_of(engine, third)


def test_max_bytes_expires_the_entry() -> None:
    kek = CountingKEK()
    cache = DataKeyCache(max_age=60, max_messages=100, max_bytes=100)
    engine = engine_with(kek, cache=cache)
    engine.encrypt(b"x" * 40, [kek])
    engine.encrypt(b"x" * 40, [kek])  # 80 bytes under this DEK
    assert kek.wraps == 1
    engine.encrypt(b"x" * 40, [kek])  # would make 120 > 100: a new DEK
    assert kek.wraps == 2
    engine.encrypt(b"x" * 101, [kek])  # larger than the limit: fresh and never cached
    engine.encrypt(b"x" * 101, [kek])
    assert kek.wraps == 4
    engine.encrypt(b"x" * 10, [kek])  # the 40-byte entry is still there
    assert kek.wraps == 4


def test_different_contexts_never_share() -> None:
    kek = CountingKEK()
    engine = engine_with(kek, cache=DataKeyCache(max_age=60, max_messages=100))
    a1 = engine.encrypt(b"m", [kek], {"tenant": "a"})
    b1 = engine.encrypt(b"m", [kek], {"tenant": "b"})
    a2 = engine.encrypt(b"m", [kek], {"tenant": "a"})
    none = engine.encrypt(b"m", [kek])
    both = engine.encrypt(b"m", [kek], {"tenant": "a", "x": "y"})
    assert kek.wraps == 4
    assert dek_of(engine, a1) == dek_of(engine, a2)
    assert len({dek_of(engine, x) for x in (a1, b1, none, both)}) == 4
    assert engine.decrypt(b1, {"tenant": "b"}) == b"m"


def test_different_recipients_never_share() -> None:
    one, two = CountingKEK("one"), CountingKEK("two")
    twin = CountingKEK("one")  # same key id as `one`, another key: must not reuse its DEK
    engine = engine_with(one, two, twin, cache=DataKeyCache(max_age=60, max_messages=100))
    blobs = {
        "one": engine.encrypt(b"m", [one]),
        "two": engine.encrypt(b"m", [two]),
        "both": engine.encrypt(b"m", [one, two]),
        "reversed": engine.encrypt(b"m", [two, one]),
        "twin": engine.encrypt(b"m", [twin]),
    }
    engine.encrypt(b"m", [one])
    engine.encrypt(b"m", [one, two])
    assert (one.wraps, two.wraps, twin.wraps) == (3, 3, 1)
    assert len({dek_of(engine, b) for b in blobs.values()}) == 5
    twin_only = Engine(registry=ProviderRegistry(), config=Config(), keys=[twin])
    assert twin_only.decrypt(blobs["twin"]) == b"m"


def test_streams_never_use_the_cache() -> None:
    kek = CountingKEK()
    cache = DataKeyCache(max_age=60, max_messages=100)
    engine = engine_with(kek, cache=cache)
    for _ in range(3):
        engine.encrypt_stream(io.BytesIO(b"data"), io.BytesIO(), [kek])
    assert kek.wraps == 3
    assert cache.stats.misses == 0


def test_thread_safety_and_limits_under_concurrency() -> None:
    kek = CountingKEK()
    cache = DataKeyCache(max_age=60, max_messages=25)
    engine = engine_with(kek, cache=cache)
    results: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(100):
            message = b"thread %d message %d" % (t, i)
            blob = engine.encrypt(message, [kek], {"k": "v"})
            with lock:
                results.append((message, blob))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 800
    stats = cache.stats
    assert stats.hits + stats.misses == 800
    assert kek.wraps == stats.misses
    assert kek.wraps >= 800 // 25
    uses = Counter(dek_of(engine, blob) for _, blob in results)
    assert max(uses.values()) <= 25  # no DEK ever served more messages than the limit
    assert sum(uses.values()) == 800
    assert len({parse_header(blob)[0].nonce for _, blob in results}) == 800
    for message, blob in results[::37]:
        assert engine.decrypt(blob, {"k": "v"}) == message


def test_clear_and_expiry_wipe_the_key() -> None:
    kek = CountingKEK()
    clock = Clock()
    cache = DataKeyCache(max_age=5, max_messages=100, clock=clock)
    engine = engine_with(kek, cache=cache)
    engine.encrypt(b"m", [kek])
    (entry,) = cache._entries.values()
    assert any(entry.dek)
    clock.now += 6
    engine.encrypt(b"m", [kek])  # expired: replaced, and the old DEK overwritten
    assert not any(entry.dek)
    (entry,) = cache._entries.values()
    cache.clear()
    assert not any(entry.dek)
    assert cache.stats.entries == 0
    assert "dek" not in repr(cache).lower()


def test_entries_are_bounded() -> None:
    kek = CountingKEK()
    cache = DataKeyCache(max_age=60, max_messages=100, max_entries=4)
    engine = engine_with(kek, cache=cache)
    for i in range(10):
        engine.encrypt(b"m", [kek], {"n": str(i)})
    assert cache.stats.entries == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_age": 0, "max_messages": 1},
        {"max_age": float("inf"), "max_messages": 1},
        {"max_age": 1, "max_messages": 0},
        {"max_age": 1, "max_messages": 1, "max_bytes": -1},
        {"max_age": 1, "max_messages": True},
    ],
)
def test_limits_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DataKeyCache(**kwargs)  # type: ignore[arg-type]
