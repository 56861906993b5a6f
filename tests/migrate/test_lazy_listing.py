"""A store's listing is consumed lazily: the job starts on the first page and never holds more
than a bounded window of listed keys ahead of the items it has read (millions of objects)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator

import pytest

import kmsenvelope
from kmsenvelope import Config, Engine, ProviderRegistry
from kmsenvelope.errors import ProviderUnavailableError
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope.migrate import MigrationProgress, RewrapPlan, StoredItem, migrate, runner
from kmsenvelope.migrate.store import Writer

COUNT = 3000
CONCURRENCY = 4
WINDOW = 200  # LIST_AHEAD for the test (100,000 in use: too many items for a quick test)


def _registry() -> ProviderRegistry:
    kek = InMemoryKEK.generate("old")
    registry = ProviderRegistry()

    class Memory:
        def __init__(self, uri: str, settings: object) -> None:
            self.key_id = uri

        def wrap(self, dek: bytes, context: object) -> kmsenvelope.WrappedKey:
            w = kek.wrap(dek, context)  # type: ignore[arg-type]
            return kmsenvelope.WrappedKey("mem", self.key_id, w.algorithm, w.ciphertext)

        def unwrap(self, wrapped: kmsenvelope.WrappedKey, context: object) -> bytes:
            inner = kmsenvelope.WrappedKey(
                "memory", kek.key_id, wrapped.algorithm, wrapped.ciphertext
            )
            return kek.unwrap(inner, context)  # type: ignore[arg-type]

    registry.register("mem", Memory)
    return registry


class StreamingStore:
    """Lists ``COUNT`` keys from a generator, recording how far listing ran ahead of reads."""

    def __init__(self, envelope: bytes) -> None:
        self.envelope = envelope
        self.items: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.listed = 0
        self.read_count = 0
        self.listed_at_first_read: int | None = None
        self.max_ahead = 0

    def list(self) -> Iterator[str]:
        for i in range(COUNT):
            with self.lock:
                self.listed += 1
                self.max_ahead = max(self.max_ahead, self.listed - self.read_count)
            yield f"k{i:06d}"

    def read(self, key: str) -> StoredItem:
        with self.lock:
            if self.listed_at_first_read is None:
                self.listed_at_first_read = self.listed
            self.read_count += 1
            data = self.items.get(key, self.envelope)
        return StoredItem(io.BytesIO(data), hashlib.sha256(data).hexdigest())

    def write(self, key: str, version: str, writer: Writer) -> bool:
        buf = io.BytesIO()
        writer(buf)
        with self.lock:
            self.items[key] = buf.getvalue()
        return True


def test_listing_is_consumed_lazily_with_a_bounded_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "LIST_AHEAD", WINDOW)
    registry = _registry()
    engine = Engine(registry=registry, config=Config())
    store = StreamingStore(engine.encrypt(b"payload", ["mem:old"]))
    seen: list[MigrationProgress] = []
    report = migrate(
        store,
        engine,
        RewrapPlan.of(add=["mem:new"], remove=["mem:old"]),
        concurrency=CONCURRENCY,
        progress=seen.append,
    )
    assert report.ok, report.summary()
    assert report.total == COUNT
    assert len(report.migrated) == COUNT
    # Work started long before the listing ended, and listing never ran far ahead of reads.
    assert store.listed_at_first_read is not None
    assert store.listed_at_first_read <= WINDOW + CONCURRENCY * 6
    assert store.max_ahead <= WINDOW + CONCURRENCY * 6
    # While listing, progress says so (no total to compute an ETA from); at the end it does not.
    assert seen[0].listing
    assert seen[0].eta is None
    assert seen[0].total < COUNT
    assert not seen[-1].listing
    assert seen[-1].total == COUNT
    for key in ("k000000", f"k{COUNT - 1:06d}"):
        ids = [r.key_id for r in kmsenvelope.inspect_envelope(store.items[key]).recipients]
        assert ids == ["mem:new"]


class FailingListStore(StreamingStore):
    """Lists 50 keys, then the service fails (a dropped connection, say)."""

    def list(self) -> Iterator[str]:
        for i in range(50):
            yield f"k{i:06d}"
        raise ProviderUnavailableError("store unreachable while listing")


def test_a_listing_that_fails_midway_raises_after_stopping_cleanly() -> None:
    registry = _registry()
    engine = Engine(registry=registry, config=Config())
    store = FailingListStore(engine.encrypt(b"payload", ["mem:old"]))
    with pytest.raises(ProviderUnavailableError, match="while listing"):
        migrate(store, engine, RewrapPlan.of(add=["mem:new"], remove=["mem:old"]), concurrency=2)
    # What was written is whole (every stored item is a re-wrapped envelope), and no listing
    # thread outlives the job.
    for data in store.items.values():
        ids = [r.key_id for r in kmsenvelope.inspect_envelope(data).recipients]
        assert ids == ["mem:new"]
    assert not [t for t in threading.enumerate() if t.name == "kmsenvelope-migrate-list"]


def test_no_listing_thread_outlives_a_finished_job() -> None:
    registry = _registry()
    engine = Engine(registry=registry, config=Config())
    store = StreamingStore(engine.encrypt(b"payload", ["mem:old"]))
    report = migrate(store, engine, RewrapPlan.of(add=["mem:new"], remove=["mem:old"]))
    assert report.ok
    assert not [t for t in threading.enumerate() if t.name == "kmsenvelope-migrate-list"]
