"""Migration throughput by store: the same envelopes re-wrapped in a folder, a SQLite table, an
S3 bucket (moto server), an Azure Blob container (Azurite) and a PostgreSQL table (a throwaway
cluster), each service started here, out of this process, on loopback.

``python -m benchmarks.migration --only stores`` (part of ``python -m benchmarks.migration``).
The provider is an in-process AES key (no latency), so the figure is the store's own cost:
listing, reading, the conditional write and the journal. Each store is timed for ``--runs``
jobs (old → new, then new → old, alternating: every job re-wraps every envelope), the median
is reported in envelopes/s and as a ratio to the folder store measured in the same run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kmsenvelope import Engine, ProviderRegistry, WrappedKey
from kmsenvelope.config import Config
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope.migrate import EnvelopeStore, Journal, RewrapPlan, migrate
from kmsenvelope.migrate.fs_store import FilesystemStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the service launchers the tests use

STORES = ("folder", "sqlite", "s3", "az", "postgresql")
SERVICE_STORES = {"s3", "az", "postgresql"}


def mem_provider(kek: InMemoryKEK) -> Any:
    """A provider ``mem:NAME`` over one in-process AES key (no latency)."""

    class Mem:
        def __init__(self, uri: str, settings: Mapping[str, object]) -> None:
            self.key_id = uri

        def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
            w = kek.wrap(dek, context)
            return WrappedKey("mem", self.key_id, w.algorithm, w.ciphertext)

        def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
            inner = WrappedKey("memory", kek.key_id, wrapped.algorithm, wrapped.ciphertext)
            return kek.unwrap(inner, context)

    return Mem


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A moto server in its own process (S3 with conditional writes); yields its URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the moto server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Fixture:
    """One store: filled with the envelopes once; ``url`` is what ``migrate`` is given."""

    def __init__(self, url: str | EnvelopeStore, read_all: Callable[[], list[bytes]]) -> None:
        self.url = url
        self.read_all = read_all


def _folder(envelopes: list[bytes], tmp: Path) -> Fixture:
    root = tmp / "folder"
    root.mkdir()
    for i, env in enumerate(envelopes):
        (root / f"{i:06d}.env").write_bytes(env)
    return Fixture(
        FilesystemStore([root]), lambda: [p.read_bytes() for p in sorted(root.iterdir())]
    )


def _sqlite(envelopes: list[bytes], tmp: Path) -> Fixture:
    path = tmp / "envelopes.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, envelope BLOB)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?)", [(f"{i:06d}", e) for i, e in enumerate(envelopes)]
        )
        db.commit()

    def read_all() -> list[bytes]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return [bytes(r[0]) for r in db.execute("SELECT envelope FROM t ORDER BY id")]

    return Fixture(f"sqlite:///{path}?table=t&key=id&column=envelope", read_all)


def _s3(envelopes: list[bytes], endpoint: str) -> Fixture:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    for i, env in enumerate(envelopes):
        s3.put_object(Bucket=bucket, Key=f"envelopes/{i:06d}.env", Body=env)

    def read_all() -> list[bytes]:
        keys = [f"envelopes/{i:06d}.env" for i in range(len(envelopes))]
        return [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]

    return Fixture(f"s3://{bucket}/envelopes", read_all)


def _az(envelopes: list[bytes], connection_string: str) -> Fixture:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(connection_string)
    name = f"bench-{uuid.uuid4().hex[:12]}"
    container = service.create_container(name)
    for i, env in enumerate(envelopes):
        container.upload_blob(f"envelopes/{i:06d}.env", env)

    def read_all() -> list[bytes]:
        keys = [f"envelopes/{i:06d}.env" for i in range(len(envelopes))]
        return [container.download_blob(k).readall() for k in keys]

    return Fixture(f"az://{name}/envelopes", read_all)


def _postgresql(envelopes: list[bytes], pg: Any) -> Fixture:
    import psycopg

    table = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(**pg.connect_args(), autocommit=True) as db:
        db.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, envelope bytea)")
        with db.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} VALUES (%s, %s)",
                [(f"{i:06d}", e) for i, e in enumerate(envelopes)],
            )

    def read_all() -> list[bytes]:
        with psycopg.connect(**pg.connect_args()) as db:
            rows = db.execute(f"SELECT envelope FROM {table} ORDER BY id").fetchall()
        return [bytes(r[0]) for r in rows]

    return Fixture(pg.url({"table": table, "key": "id", "column": "envelope"}), read_all)


def _time_store(
    fixture: Fixture, registry: ProviderRegistry, runs: int, concurrency: int, tmp: Path
) -> list[float]:
    """Seconds per job: ``runs`` jobs alternating old → new and new → old, journaled."""
    engine = Engine(registry=registry, config=Config(allowed_keys=("mem:*",)))
    times = []
    for run in range(runs + 1):  # one warm-up job, not counted
        src, dst = ("mem:old", "mem:new") if run % 2 == 0 else ("mem:new", "mem:old")
        journal = Journal.open(tmp / f"job-{uuid.uuid4().hex}.journal", {"run": run}, resume=False)
        start = time.perf_counter()
        report = migrate(
            fixture.url,
            engine,
            RewrapPlan.of(add=[dst], remove=[src]),
            concurrency=concurrency,
            journal=journal,
        )
        elapsed = time.perf_counter() - start
        journal.close()
        if not report.ok or report.skipped or len(report.migrated) != report.total:
            some = dict(list(report.failed.items())[:1])
            raise RuntimeError(f"{fixture.url}: {report.summary()} {some}")
        if run:
            times.append(elapsed)
    return times


def run_stores(
    stores: list[str], count: int, runs: int, concurrency: int
) -> dict[str, dict[str, float]]:
    """envelopes/s per store (median of ``runs`` jobs) and the ratio to the folder store."""
    kek = InMemoryKEK.generate("bench")
    registry = ProviderRegistry.load(allow=["stores", "aws-kms", "azure-kv"])
    registry.register("mem", mem_provider(kek))
    seed = Engine(registry=registry, config=Config())
    envelopes = [seed.encrypt(b"x" * 1024, ["mem:old"]) for _ in range(count)]
    rows: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="kmsenvelope-store-bench-") as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        for store in stores:
            fixture = _fixture(store, envelopes, tmp, stack)
            times = _time_store(fixture, registry, runs, concurrency, tmp)
            median = statistics.median(times)
            rows[store] = {"median_s": median, "envelopes_per_s": count / median}
            final = fixture.read_all()
            if len(final) != count:
                raise RuntimeError(f"{store}: {len(final)} envelopes left of {count}")
    base = rows.get("folder")
    for row in rows.values():
        if base:
            row["vs_folder"] = row["envelopes_per_s"] / base["envelopes_per_s"]
    return rows


def _fixture(store: str, envelopes: list[bytes], tmp: Path, stack: contextlib.ExitStack) -> Fixture:
    """Start the store's service (if any) for the rest of the run, and fill it."""
    if store == "folder":
        return _folder(envelopes, tmp)
    if store == "sqlite":
        return _sqlite(envelopes, tmp)
    if store == "s3":
        endpoint = stack.enter_context(moto_s3())
        for name, value in {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            os.environ[name] = value
        return _s3(envelopes, endpoint)
    if store == "az":
        from services.azurite import start_azurite

        azurite = stack.enter_context(start_azurite())
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
        return _az(envelopes, azurite.connection_string)
    if store == "postgresql":
        from services.postgres import PostgresCluster

        return _postgresql(envelopes, stack.enter_context(PostgresCluster()))
    raise ValueError(f"unknown store {store!r} (stores: {', '.join(STORES)})")
