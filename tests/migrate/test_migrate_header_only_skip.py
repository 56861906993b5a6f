"""An envelope that already is what the plan makes of it is skipped after reading its header,
without any provider call: a re-run (or a shard retried after a worker died) costs one read per
item and never double-wraps. A key named by an alias and recorded by its key id (as AWS records
an alias's key ARN) is recognized by the key itself, once, not per envelope."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Mapping

import pytest

import kmsenvelope
from kmsenvelope import Config, Engine, ProviderRegistry, WrappedKey
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope.migrate import CallPolicy, GuardedEngine, RewrapPlan, StoredItem, migrate
from kmsenvelope.migrate.store import Writer


class Calls:
    """Every provider call, by kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wrap = self.unwrap = self.recognize = 0


def registry(calls: Calls) -> ProviderRegistry:
    """``mem:NAME`` keys, and ``mem:alias/NAME`` which records ``mem:key/NAME`` (an alias)."""
    inner = InMemoryKEK.generate("inner")

    class Memory:
        def __init__(self, uri: str, settings: Mapping[str, object]) -> None:
            self.key_id = uri
            name = uri.removeprefix("mem:alias/")
            self.recorded = f"mem:key/{name}" if uri.startswith("mem:alias/") else uri

        def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
            with calls.lock:
                calls.wrap += 1
            w = inner.wrap(dek, context)
            return WrappedKey("mem", self.recorded, w.algorithm, w.ciphertext)

        def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
            with calls.lock:
                calls.unwrap += 1
            raw = WrappedKey("memory", inner.key_id, wrapped.algorithm, wrapped.ciphertext)
            return inner.unwrap(raw, context)

        def recognizes(self, key_id: str) -> bool:
            with calls.lock:
                calls.recognize += 1
            return key_id == self.recorded

    found = ProviderRegistry()
    found.register("mem", Memory)
    return found


class Store:
    def __init__(self, items: dict[str, bytes]) -> None:
        self.items = items

    def list(self) -> Iterable[str]:
        return sorted(self.items)

    def read(self, key: str) -> StoredItem:
        return StoredItem(io.BytesIO(self.items[key]), str(hash(self.items[key])))

    def write(self, key: str, version: str, writer: Writer) -> bool:
        out = io.BytesIO()
        writer(out)
        if str(hash(self.items[key])) != version:
            return False
        self.items[key] = out.getvalue()
        return True


def ids(data: bytes) -> list[str]:
    return [r.key_id for r in kmsenvelope.inspect_envelope(data).recipients]


@pytest.mark.parametrize(
    ("target", "recorded"), [("mem:new", "mem:new"), ("mem:alias/new", "mem:key/new")]
)
def test_a_second_run_makes_no_provider_call(target: str, recorded: str) -> None:
    calls = Calls()
    found = registry(calls)
    seed = Engine(registry=found, config=Config())
    store = Store({f"k{i}": seed.encrypt(f"v{i}".encode(), ["mem:old"]) for i in range(20)})
    plan = RewrapPlan.of(add=[target], remove=["mem:old"])

    def engine() -> GuardedEngine:
        return GuardedEngine(
            CallPolicy(per_provider=4), registry=found, config=Config(), trusted_keys=["mem:old"]
        )

    first = migrate(store, engine(), plan, concurrency=4)
    assert len(first.migrated) == 20, first.to_json()
    assert all(ids(data) == [recorded] for data in store.items.values())
    before = (calls.wrap, calls.unwrap)

    again = migrate(store, engine(), plan, concurrency=4)
    assert again.ok
    assert len(again.unchanged) == 20
    assert (calls.wrap, calls.unwrap) == before  # header only: no wrap, no unwrap
    assert all(ids(data) == [recorded] for data in store.items.values())  # never twice
    if target != recorded:
        assert calls.recognize <= 40  # asked of the key, at most twice an item, never a KMS call


def test_half_done_job_finishes_the_rest_only() -> None:
    """A job run again after some items were done (a worker died mid-shard) re-wraps only the
    others, and calls providers only for them."""
    calls = Calls()
    found = registry(calls)
    seed = Engine(registry=found, config=Config())
    items = {f"k{i:02d}": seed.encrypt(b"x", ["mem:old"]) for i in range(10)}
    plan = RewrapPlan.of(add=["mem:new"], remove=["mem:old"])
    done = Store({k: v for k, v in items.items() if k < "k05"})
    engine = GuardedEngine(CallPolicy(), registry=found, config=Config(), trusted_keys=["mem:old"])
    migrate(done, engine, plan)
    store = Store({**items, **done.items})
    before = calls.unwrap
    report = migrate(store, engine, plan)
    assert sorted(report.migrated) == [f"k{i:02d}" for i in range(5, 10)]
    assert len(report.unchanged) == 5
    assert calls.unwrap - before == 10  # the five left: one unwrap and one verification each
    assert all(ids(data) == ["mem:new"] for data in store.items.values())


def test_a_rotation_or_a_recipient_to_remove_still_goes_to_the_provider() -> None:
    calls = Calls()
    found = registry(calls)
    seed = Engine(registry=found, config=Config())
    store = Store({"a": seed.encrypt(b"x", ["mem:old", "mem:new"])})
    engine = GuardedEngine(CallPolicy(), registry=found, config=Config(), trusted_keys=["mem:old"])
    report = migrate(store, engine, RewrapPlan.of(add=["mem:new"], remove=["mem:old"]))
    assert report.migrated == ["a"]
    assert ids(store.items["a"]) == ["mem:new"]
