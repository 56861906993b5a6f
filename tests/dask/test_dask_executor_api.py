"""``kmsenvelope.migrate(url, engine, plan, executor=…)`` with plain ``concurrent.futures``
executors: a ``ProcessPoolExecutor`` (tasks and results cross process boundaries), and an
executor that records every pickled task and result, to prove that no passphrase, credential or
data key travels; what cannot travel is refused with a clear error; dask is never imported."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import kmsenvelope
from kmsenvelope import ConfigError, Engine
from kmsenvelope.hazmat import from_compact, read_header
from kmsenvelope.local import Keystore
from kmsenvelope.migrate import (
    CallPolicy,
    GuardedEngine,
    Journal,
    MigrationReport,
    RewrapPlan,
    ShardJob,
    SqliteStore,
    migrate,
    run_shard,
)

SECRET_AWS = "executor-test-aws-secret-9f8e7d"
PLAN = RewrapPlan.of(add=["local:new"], remove=["local:old"])


@pytest.fixture
def keys(keystore: Keystore, monkeypatch: pytest.MonkeyPatch) -> Keystore:
    """``local:old`` and ``local:new``; the sqlite store plugin loaded (here and in workers)."""
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local,stores")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_AWS)  # in every worker's environment
    keystore.create_key("old")
    keystore.create_key("new")
    return keystore


def table(path: Path, count: int) -> tuple[str, dict[int, bytes]]:
    """A SQLite table of ``count`` compact envelopes for ``local:old``; its URL and the rows."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, env TEXT)")
    rows = {}
    for i in range(count):
        rows[i] = kmsenvelope.encrypt(
            f"row {i}".encode(), ["local:old"], {"row": str(i)}, armor=True
        )
        db.execute("INSERT INTO secrets VALUES (?, ?)", (i, rows[i].decode()))
    db.commit()
    db.close()
    return f"sqlite:///{path}?table=secrets&key=id&column=env", rows


def recipients(path: Path) -> dict[int, list[str]]:
    db = sqlite3.connect(path)
    out = {
        i: [r.key_id for r in kmsenvelope.inspect_envelope(env.encode()).recipients]
        for i, env in db.execute("SELECT id, env FROM secrets")
    }
    db.close()
    return out


def engine() -> GuardedEngine:
    return GuardedEngine(CallPolicy(per_provider=4), trusted_keys=["local:new"])


def test_a_process_pool_runs_the_job(keys: Keystore, tmp_path: Path) -> None:
    url, rows = table(tmp_path / "app.db", 60)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        report = migrate(url, engine(), PLAN, executor=pool, shard_size=7, concurrency=4)
        assert report.ok, report.to_json()
        assert len(report.migrated) == 60
        assert report.total == 60
        assert recipients(tmp_path / "app.db") == {i: ["local:new/1"] for i in rows}
        again = migrate(url, engine(), PLAN, executor=pool, shard_size=7)
    # A second run finds every envelope done from its header: nothing re-wrapped.
    assert again.ok
    assert len(again.unchanged) == 60
    assert again.migrated == []
    assert recipients(tmp_path / "app.db") == {i: ["local:new/1"] for i in rows}


class RecordingExecutor(Executor):
    """Runs each task in a thread of this process, from its pickled form, and keeps the bytes
    of every task (function and arguments) and every result, as a cluster would carry them."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.returned: list[bytes] = []
        self._pool = ThreadPoolExecutor(2)
        self._lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        payload = pickle.dumps((fn, args, kwargs))
        self.sent.append(payload)

        def run() -> Any:
            function, arguments, keywords = pickle.loads(payload)
            data = pickle.dumps(function(*arguments, **keywords))
            self.returned.append(data)
            return pickle.loads(data)

        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        future = self._pool.submit(run)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future[Any]) -> None:
        with self._lock:
            self.in_flight -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def data_keys(rows: dict[int, bytes]) -> list[bytes]:
    """The data key of each envelope (unwrapped here, by the test)."""
    opener = Engine()
    out = []
    for envelope in rows.values():
        binary = from_compact(envelope)
        header, _size = read_header(io.BytesIO(binary), opener.limits)
        out.append(opener.unwrap_data_key(header))
    return out


def test_no_secret_travels_in_tasks_or_results(keys: Keystore, tmp_path: Path) -> None:
    url, rows = table(tmp_path / "app.db", 30)
    deks = data_keys(rows)
    recorder = RecordingExecutor()
    report = migrate(url, engine(), PLAN, executor=recorder, shard_size=10)
    assert report.ok, report.to_json()
    assert len(report.migrated) == 30
    assert len(recorder.sent) == len(recorder.returned) == 3
    for payload in recorder.sent:  # what a task is told: the URL, the plan, its keys
        assert url.encode() in payload
        assert b"local:new" in payload
        assert b"run_shard" in payload
    passphrase = os.environ["KMSENVELOPE_KEYSTORE_PASSPHRASE"].encode()
    for blob in recorder.sent + recorder.returned:
        assert passphrase not in blob
        assert SECRET_AWS.encode() not in blob
        assert not any(dek in blob for dek in deks)
        assert not any(envelope in blob for envelope in rows.values())


def test_what_cannot_travel_is_refused(keys: Keystore, tmp_path: Path) -> None:
    url, _rows = table(tmp_path / "app.db", 2)
    recorder = RecordingExecutor()
    store = SqliteStore(tmp_path / "app.db", "secrets", value_column="env")
    with pytest.raises(TypeError, match="store URL"):
        migrate(store, engine(), PLAN, executor=recorder)
    kek = kmsenvelope.InMemoryKEK.generate("code")
    with pytest.raises(TypeError, match="by URI"):
        migrate(url, engine(), RewrapPlan.of(add=[kek]), executor=recorder)
    journal = Journal.open(tmp_path / "j.jsonl", {"job": 1}, resume=False)
    with pytest.raises(ValueError, match="no journal"):
        migrate(url, engine(), PLAN, executor=recorder, journal=journal)
    journal.close()
    with pytest.raises(ConfigError, match="password is never sent") as refused:
        migrate("postgresql://app:hunter2@db.example/app?table=t&key=k&column=c",
                engine(), PLAN, executor=recorder)  # fmt: skip
    assert "hunter2" not in str(refused.value)
    with pytest.raises(TypeError, match="executor must be"):
        migrate(url, engine(), PLAN, executor=object())  # type: ignore[arg-type]
    assert recorder.sent == []


def test_a_worker_that_cannot_start_fails_its_items_and_says_why(
    keys: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _rows = table(tmp_path / "app.db", 3)
    job = ShardJob(job_id="j-no-stores", store_url=url, plan=PLAN)
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local")  # this "worker" has no sqlite store
    report = run_shard(job, ("0", "1", "2"))
    assert isinstance(report, MigrationReport)
    assert sorted(report.failed) == ["0", "1", "2"]
    assert all(r.startswith("not started on worker ") for r in report.failed.values())
    assert all("sqlite" in r for r in report.failed.values())
    pickle.loads(pickle.dumps(report))  # a result a cluster can carry


def test_the_core_and_the_cli_do_not_import_dask() -> None:
    code = (
        "import sys, kmsenvelope, kmsenvelope.cli, kmsenvelope.migrate, "
        "kmsenvelope.migrate.distributed, kmsenvelope.migrate.shards\n"
        "from kmsenvelope.cli import build_parser\n"
        "build_parser().parse_args(['migrate', 'x', '--to', 'local:a'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_rate_limit_is_shared_out_and_bounds_shards_in_flight(
    keys: Keystore, tmp_path: Path
) -> None:
    url, _rows = table(tmp_path / "app.db", 40)
    recorder = RecordingExecutor()
    recorder._max_workers = 4  # as a process pool of four says how many processes it has
    limited = GuardedEngine(
        CallPolicy(per_provider=3, rate_limits={"local": 400.0}), trusted_keys=["local:new"]
    )
    report = migrate(url, limited, PLAN, executor=recorder, shard_size=5, concurrency=3)
    assert report.ok, report.to_json()
    jobs = {pickle.loads(payload)[1][0] for payload in recorder.sent}
    assert len(jobs) == 1  # one job, told the same to every shard
    (job,) = jobs
    assert job.rate_limits == (("local", 100.0),)  # 400 calls/s shared by four workers
    assert job.concurrency == 3
    assert recorder.most_in_flight <= 4  # never more shards running than workers


def test_the_cluster_as_a_whole_keeps_to_the_rate_limit(keys: Keystore, tmp_path: Path) -> None:
    """Two processes, 60 envelopes, 3 local calls each, at most 60 calls/s for the whole
    cluster: the job cannot take less than about 3 s (each process keeps to 30 calls/s)."""
    url, _rows = table(tmp_path / "app.db", 60)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        list(pool.map(abs, range(4)))  # both processes started before the clock runs
        limited = GuardedEngine(
            CallPolicy(per_provider=4, rate_limits={"local": 60.0}), trusted_keys=["local:new"]
        )
        report = migrate(url, limited, PLAN, executor=pool, shard_size=10, concurrency=4)
    assert report.ok, report.to_json()
    assert len(report.migrated) == 60
    burst = 2 * 3  # each process's token bucket starts full (rate / 10 tokens)
    assert report.seconds >= (180 - burst) / 60 * 0.95, report.seconds
