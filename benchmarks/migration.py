"""Migration throughput: with an injected provider latency at concurrency 1 and 32, and by store.

``python -m benchmarks.migration`` (``--only latency``, ``--only stores`` or ``--only cluster``).
Latency: each provider call (unwrap the old recipient, wrap the new one, verify it) sleeps
``--latency-ms`` like a KMS round trip; envelopes live in an in-memory store so disk speed does
not enter the figure. Stores (:mod:`benchmarks.store_bench`): the same envelopes in a folder,
SQLite, S3 (moto), Azure Blob (Azurite) and PostgreSQL, envelopes/s each and the ratio to the
folder.
Cluster (:mod:`benchmarks.cluster_bench`): a real Dask scheduler and 1, 2 and 4 worker
processes against a provider 20 ms away, with and without a cluster-wide KMS budget.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from kmsenvelope import Engine, ProviderRegistry, WrappedKey
from kmsenvelope.config import Config
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope.migrate import CallPolicy, GuardedEngine, RewrapPlan, StoredItem, migrate

from . import cluster_bench, store_bench

RESULTS = Path(__file__).parent / "results"


class MemoryStore:
    """The store protocol over a dict (conditional write on the stored bytes)."""

    def __init__(self, items: dict[str, bytes]) -> None:
        self.items = items
        self.lock = threading.Lock()

    def list(self) -> Iterable[str]:
        return sorted(self.items)

    def read(self, key: str) -> StoredItem:
        data = self.items[key]
        return StoredItem(io.BytesIO(data), str(id(data)))

    def write(self, key: str, version: str, writer) -> bool:  # type: ignore[no-untyped-def]
        buf = io.BytesIO()
        writer(buf)
        with self.lock:
            if str(id(self.items[key])) != version:
                return False
            self.items[key] = buf.getvalue()
        return True


def slow_provider(latency: float, kek: InMemoryKEK):  # type: ignore[no-untyped-def]
    class Slow:
        def __init__(self, uri: str, settings: Mapping[str, object]) -> None:
            self._uri = uri

        @property
        def key_id(self) -> str:
            return self._uri

        def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
            time.sleep(latency)
            w = kek.wrap(dek, context)
            return WrappedKey("slow", self._uri, w.algorithm, w.ciphertext)

        def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
            time.sleep(latency)
            inner = WrappedKey("memory", kek.key_id, wrapped.algorithm, wrapped.ciphertext)
            return kek.unwrap(inner, context)

    return Slow


def run(envelopes: int, latency_ms: float, concurrency: int) -> float:
    """Seconds to migrate ``envelopes`` from slow:old to slow:new at ``concurrency``."""
    registry = ProviderRegistry()
    registry.register("slow", slow_provider(latency_ms / 1000, InMemoryKEK.generate("bench")))
    seed = Engine(registry=registry, config=Config())
    store = MemoryStore(
        {f"k{i:06d}": seed.encrypt(b"x" * 1024, ["slow:old"]) for i in range(envelopes)}
    )
    engine = GuardedEngine(
        CallPolicy(per_provider=concurrency),
        registry=registry,
        config=Config(),
        trusted_keys=["slow:old"],
    )
    start = time.perf_counter()
    report = migrate(
        store, engine, RewrapPlan.of(add=["slow:new"], remove=["slow:old"]), concurrency=concurrency
    )
    elapsed = time.perf_counter() - start
    assert report.ok, report.summary()
    assert len(report.migrated) == envelopes, report.summary()
    return elapsed


def latency_rows(envelopes: int, latency_ms: float, runs: int) -> dict[str, object]:
    """Concurrency 1 and 32 against a provider ``latency_ms`` away."""
    rows = {}
    for concurrency in (1, 32):
        times = [run(envelopes, latency_ms, concurrency) for _ in range(runs)]
        median = statistics.median(times)
        rows[concurrency] = {"median_s": median, "envelopes_per_s": envelopes / median}
    ratio = rows[1]["median_s"] / rows[32]["median_s"]
    print(
        f"migration, {envelopes} envelopes, {latency_ms:.0f} ms per provider call "
        "(unwrap + wrap + verify = 3 calls each)"
    )
    for c, r in rows.items():
        print(
            f"  concurrency {c:>2}: {r['envelopes_per_s']:8.1f} envelopes/s "
            f"(median {r['median_s']:.2f}s)"
        )
    print(f"  concurrency 32 / concurrency 1 throughput: {ratio:.1f}x")
    return {
        "envelopes": envelopes,
        "latency_ms": latency_ms,
        "by_concurrency": rows,
        "ratio_32_vs_1": ratio,
    }


def store_rows(stores: list[str], envelopes: int, runs: int, concurrency: int) -> dict[str, object]:
    """envelopes/s by store, next to the folder store, in this run."""
    rows = store_bench.run_stores(stores, envelopes, runs, concurrency)
    print(
        f"migration by store, {envelopes} envelopes of 1 KiB, in-process key (no latency), "
        f"concurrency {concurrency}, median of {runs} jobs"
    )
    for name, row in rows.items():
        versus = f"{row['vs_folder']:6.2f}x folder" if "vs_folder" in row else ""
        print(f"  {name:<11} {row['envelopes_per_s']:8.1f} envelopes/s  {versus}")
    return {"envelopes": envelopes, "concurrency": concurrency, "runs": runs, "by_store": rows}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.migration")
    parser.add_argument("--envelopes", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("latency", "stores", "cluster"))
    parser.add_argument(
        "--stores",
        default=",".join(store_bench.STORES),
        help="comma-separated stores for the store table (default: all)",
    )
    parser.add_argument("--store-envelopes", type=int, default=1000)
    parser.add_argument("--store-concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    result: dict[str, object] = {}
    if args.only in (None, "latency"):
        result.update(latency_rows(args.envelopes, args.latency_ms, args.runs))
    if args.only in (None, "stores"):
        stores = [s.strip() for s in args.stores.split(",") if s.strip()]
        result["stores"] = store_rows(
            stores, args.store_envelopes, args.runs, args.store_concurrency
        )
    if args.only in (None, "cluster"):
        result["cluster"] = cluster_bench.cluster_rows()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "migration.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
