"""``kmsenvelope migrate STORE_URL --dask local`` (a LocalCluster of worker processes started by
the command), Ctrl-C then the same command again, and the one-line errors of ``--dask``: an
address where no scheduler listens, a folder instead of a store URL, ``--resume``."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kmsenvelope
from kmsenvelope.local import Keystore


@pytest.fixture
def keys(keystore: Keystore, monkeypatch: pytest.MonkeyPatch) -> Keystore:
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local,stores")
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "2s")
    keystore.create_key("old")
    keystore.create_key("new")
    return keystore


def table(path: Path, count: int) -> str:
    """A SQLite table of ``count`` compact envelopes for ``local:old``; its URL."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, env TEXT)")
    for i in range(count):
        env = kmsenvelope.encrypt(f"row {i}".encode(), ["local:old"], {"row": str(i)}, armor=True)
        db.execute("INSERT INTO secrets VALUES (?, ?)", (i, env.decode()))
    db.commit()
    db.close()
    return f"sqlite:///{path}?table=secrets&key=id&column=env"


def recipients(path: Path) -> dict[int, list[str]]:
    db = sqlite3.connect(path)
    out = {
        i: [r.key_id for r in kmsenvelope.inspect_envelope(env.encode()).recipients]
        for i, env in db.execute("SELECT id, env FROM secrets")
    }
    db.close()
    return out


def command(url: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "kmsenvelope", "migrate", url, "--to", "local:new",
            "--remove", "local:old", *more]  # fmt: skip


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def test_a_local_cluster_runs_the_job(keys: Keystore, tmp_path: Path) -> None:
    url = table(tmp_path / "app.db", 200)
    report_path = tmp_path / "report.json"
    proc = run(command(url, "--dask", "local", "--shard-size", "25", "--report", str(report_path)))
    assert proc.returncode == 0, proc.stderr
    assert "kmsenvelope: migrating on a local Dask cluster (" in proc.stderr
    assert "200 items: 200 migrated" in proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    assert report["summary"]["migrated"] == 200
    assert recipients(tmp_path / "app.db") == {i: ["local:new/1"] for i in range(200)}


def test_ctrl_c_reports_what_was_done_and_the_same_command_finishes(
    keys: Keystore, tmp_path: Path
) -> None:
    count = 1500
    url = table(tmp_path / "app.db", count)
    report_path = tmp_path / "report.json"
    args = command(url, "--dask", "local", "--shard-size", "10", "--concurrency", "1",
                   "--report", str(report_path))  # fmt: skip
    job = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while sum(ids == ["local:new/1"] for ids in recipients(tmp_path / "app.db").values()) < 50:
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        job.send_signal(signal.SIGINT)
        _out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 130, err
    assert "Traceback" not in err
    assert "run the same command again to continue" in err
    report = json.loads(report_path.read_text())
    assert report["summary"]["interrupted"] is True
    assert report["summary"]["left"] > 0
    assert report["summary"]["migrated"] >= 1

    again = run([*args, "-q"])
    assert again.returncode == 0, again.stderr
    final = json.loads(report_path.read_text())["summary"]
    assert final["total"] == count
    assert final["migrated"] + final["unchanged"] == count
    assert final["unchanged"] >= report["summary"]["migrated"]  # done earlier: header only
    assert recipients(tmp_path / "app.db") == {i: ["local:new/1"] for i in range(count)}


def test_no_scheduler_at_the_address_is_a_one_line_error(keys: Keystore, tmp_path: Path) -> None:
    url = table(tmp_path / "app.db", 1)
    proc = run(command(url, "--dask", "tcp://127.0.0.1:9"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "kmsenvelope: error: --dask tcp://127.0.0.1:9: cannot connect to a Dask scheduler"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resume"], "--resume and --journal do not apply with --dask"),
        (["--journal", "j.jsonl"], "--resume and --journal do not apply with --dask"),
        (["--shard-size", "0"], "--shard-size must be at least 1"),
    ],
)
def test_what_dask_does_not_take(
    keys: Keystore, tmp_path: Path, extra: list[str], message: str
) -> None:
    url = table(tmp_path / "app.db", 1)
    proc = run(command(url, "--dask", "local", *extra))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"kmsenvelope: error: {message}"), proc.stderr


def test_dask_needs_a_store_url(keys: Keystore, tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    proc = run(command(str(tmp_path / "folder"), "--dask", "local"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("kmsenvelope: error: --dask needs a store URL"), proc.stderr


def test_a_setting_option_does_not_reach_the_workers(keys: Keystore, tmp_path: Path) -> None:
    url = table(tmp_path / "app.db", 1)
    proc = run(command(url, "--dask", "local", "--keystore", str(tmp_path)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(
        "kmsenvelope: error: --keystore does not reach the workers with --dask"
    ), proc.stderr
