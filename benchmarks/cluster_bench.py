"""Migration on a Dask cluster: envelopes/s with 1, 2 and 4 worker processes on this machine.

``python -m benchmarks.cluster_bench`` (or :func:`cluster_rows`, which ``benchmarks.migration``
calls). A ``dask scheduler`` and ``dask worker`` processes (one thread each) are started here on
127.0.0.1; the workers get the benchmark-only provider :mod:`benchmarks.slowkms` as a plugin
(every wrap and unwrap sleeps ``latency_ms``, like a KMS round trip: three calls per envelope,
unwrap + wrap + verification) and the envelopes live in a SQLite table on tmpfs, so the figure
is the provider latency, the concurrency and the cluster. Each worker count is measured twice:
under a cluster-wide KMS budget (``--rate-limit slowkms=BUDGET``, shared out among the workers:
throughput grows with workers until the budget is the limit) and without one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kmsenvelope import Engine, ProviderRegistry
from kmsenvelope.config import Config
from kmsenvelope.migrate import CallPolicy, GuardedEngine, RewrapPlan, migrate

from . import slowkms

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
CALLS_PER_ENVELOPE = 3  # unwrap the old recipient, wrap the new one, verify it


def _seed(path: Path, envelopes: int) -> str:
    """A SQLite table of ``envelopes`` compact envelopes for ``slowkms:old``; its URL."""
    registry = ProviderRegistry()
    registry.register("slowkms", lambda uri, _s: slowkms.SlowKmsKey(uri, {"latency_ms": "0"}))
    engine = Engine(registry=registry, config=Config())
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE envelopes (id INTEGER PRIMARY KEY, env TEXT)")
    rows = [
        (i, engine.encrypt(b"x" * 256, ["slowkms:old"], armor=True).decode())
        for i in range(envelopes)
    ]
    db.executemany("INSERT INTO envelopes VALUES (?, ?)", rows)
    db.commit()
    db.close()
    return f"sqlite:///{path}?table=envelopes&key=id&column=env"


class _Cluster:
    """A scheduler and single-threaded worker processes on 127.0.0.1."""

    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self.root, self.env = root, dict(env)
        self.file = root / "scheduler.json"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(self.file)])  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.file.exists() or not self.file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("the Dask scheduler did not start")
            time.sleep(0.1)
        self.address = str(json.loads(self.file.read_text())["address"])

    def _spawn(self, args: list[str]) -> None:
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=self.root,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def add_worker(self) -> None:
        self._spawn(["distributed.cli.dask_worker", "--scheduler-file", str(self.file),
                     "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                     "--no-dashboard", "--memory-limit", "0"])  # fmt: skip

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def _cluster(root: Path, latency_ms: float) -> Iterator[_Cluster]:
    """A cluster whose workers have the slowkms plugin and the stores, nothing else."""
    plugin = slowkms.install_for_workers(root / "plugin")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin), str(ROOT)]),
        "KMSENVELOPE_PLUGINS": f"stores,{slowkms.ENTRY_POINT}",
        "KMSENVELOPE_PROVIDERS__SLOWKMS__LATENCY_MS": str(latency_ms),
        "XDG_CONFIG_HOME": str(root / "config"),  # no user configuration of this machine
    }
    env.pop("KMSENVELOPE_CONFIG", None)
    cluster = _Cluster(root, env)
    try:
        yield cluster
    finally:
        cluster.stop()


def _run(
    client: Any, url: str, envelopes: int, concurrency: int, budget: float | None, shard: int
) -> float:
    """Seconds to migrate every envelope of ``url`` slowkms:old -> slowkms:new on the cluster."""
    policy = CallPolicy(
        per_provider=concurrency, rate_limits={"slowkms": budget} if budget is not None else {}
    )
    engine = GuardedEngine(
        policy,
        registry=ProviderRegistry.load(allow=["stores"]),  # this process only lists
        config=Config(),
        trusted_keys=["slowkms:old"],
    )
    plan = RewrapPlan.of(add=["slowkms:new"], remove=["slowkms:old"])
    report = migrate(url, engine, plan, executor=client, concurrency=concurrency, shard_size=shard)
    assert report.ok, report.to_json()
    assert len(report.migrated) == envelopes, report.summary()
    return report.seconds


def cluster_rows(
    envelopes: int = 1200,
    latency_ms: float = 20.0,
    workers: Sequence[int] = (1, 2, 4),
    concurrency: int = 4,
    budget: float = 600.0,
    runs: int = 1,
    shard_size: int = 100,
) -> dict[str, object]:
    """Envelopes/s on a local Dask cluster of each size in ``workers`` (processes, one thread
    each, ``concurrency`` envelopes in flight per worker), under a KMS budget of ``budget``
    provider calls/s for the whole cluster and without one; median of ``runs`` jobs each.

    Returns ``{"envelopes", "latency_ms", "concurrency_per_worker", "kms_budget_calls_per_s",
    "budget_envelopes_per_s", "by_workers": {N: {"budget": {...}, "no_budget": {...}}}}``, each
    inner dict ``{"median_s", "envelopes_per_s"}``; prints the table.
    """
    from distributed import Client

    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # keep the disk out of it
    rows: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        root = Path(tmp)
        seed = root / "seed.db"
        _seed(seed, envelopes)
        with _cluster(root, latency_ms) as cluster:
            client = Client(cluster.address, set_as_default=False, timeout=60)
            try:
                started = 0
                for count in sorted(workers):
                    while started < count:
                        cluster.add_worker()
                        started += 1
                    client.wait_for_workers(count, timeout=120)
                    rows[count] = {}
                    for label, limit in (("budget", budget), ("no_budget", None)):
                        times = []
                        for run in range(runs):
                            db = root / f"w{count}-{label}-{run}.db"
                            shutil.copyfile(seed, db)
                            url = f"sqlite:///{db}?table=envelopes&key=id&column=env"
                            times.append(
                                _run(client, url, envelopes, concurrency, limit, shard_size)
                            )
                        median = statistics.median(times)
                        rows[count][label] = {
                            "median_s": median,
                            "envelopes_per_s": envelopes / median,
                        }
            finally:
                client.close()
    ceiling = budget / CALLS_PER_ENVELOPE
    print(
        f"migration on a Dask cluster, {envelopes} envelopes, {latency_ms:.0f} ms per provider "
        f"call ({CALLS_PER_ENVELOPE} calls each), concurrency {concurrency} per worker; KMS "
        f"budget {budget:.0f} calls/s for the cluster (= {ceiling:.0f} envelopes/s at most)"
    )
    for count, row in rows.items():
        print(
            f"  {count} worker(s): {row['budget']['envelopes_per_s']:7.1f} envelopes/s under "
            f"the budget, {row['no_budget']['envelopes_per_s']:7.1f} without"
        )
    return {
        "envelopes": envelopes,
        "latency_ms": latency_ms,
        "concurrency_per_worker": concurrency,
        "kms_budget_calls_per_s": budget,
        "budget_envelopes_per_s": ceiling,
        "by_workers": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_bench")
    parser.add_argument("--envelopes", type=int, default=1200)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--shard-size", type=int, default=100)
    args = parser.parse_args(argv)
    result = cluster_rows(
        args.envelopes,
        args.latency_ms,
        [int(w) for w in args.workers.split(",") if w.strip()],
        args.concurrency,
        args.budget,
        args.runs,
        args.shard_size,
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
