"""Ctrl-C during a rate-limited ``migrate``: it stops at once, loses nothing, writes its report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from migrate_support import ids_in, migrate_command

import kmsenvelope
from kmsenvelope.local import Keystore
from kmsenvelope.migrate import (
    CallPolicy,
    FilesystemStore,
    GuardedEngine,
    MigrationInterrupted,
    MigrationProgress,
    RewrapPlan,
    migrate,
)

COUNT = 40


@pytest.fixture
def tree(keystore: Keystore, tmp_path: Path) -> dict[Path, bytes]:
    keystore.create_key("old")
    keystore.create_key("new")
    originals = {}
    for i in range(COUNT):
        path = tmp_path / "tree" / f"env{i:03d}.bin"
        path.parent.mkdir(exist_ok=True)
        data = os.urandom(100 + i)
        path.write_bytes(kmsenvelope.encrypt(data, ["local:old"]))
        originals[path] = data
    return originals


def done_lines(journal: Path) -> int:
    if not journal.exists():
        return 0
    return sum('"status": "done"' in line for line in journal.read_text().splitlines())


def test_sigint_stops_a_rate_limited_job_promptly(tree: dict[Path, bytes], tmp_path: Path) -> None:
    journal, report = tmp_path / "job.journal", tmp_path / "report.json"
    cmd = migrate_command(
        tmp_path / "tree",
        # 3 provider calls per envelope at 2 calls/s: the job would take a minute, and the
        # queue of envelopes already handed to workers alone would take more than 10 s.
        "--rate-limit",
        "local=2",
        "--journal",
        str(journal),
        "--report",
        str(report),
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while done_lines(journal) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent

    assert proc.returncode == 130, err
    assert took < 4.0, f"took {took:.1f}s to stop after Ctrl-C"
    assert "Traceback" not in err
    assert "--resume" in err.splitlines()[-1]
    data = json.loads(report.read_text())
    assert data["ok"] is False
    summary = data["summary"]
    assert summary["interrupted"] is True
    assert 1 <= summary["migrated"] < COUNT
    assert summary["migrated"] + summary["left"] == COUNT
    migrated_now = [p for p in tree if ids_in(p.read_bytes()) == ["local:new/1"]]
    assert len(migrated_now) == summary["migrated"] == done_lines(journal)
    # Stopped means stopped: nothing changes after the process is gone, nothing half-done.
    for path, plaintext in tree.items():
        env = path.read_bytes()
        assert ids_in(env) in (["local:old/1"], ["local:new/1"])
        assert kmsenvelope.decrypt(env) == plaintext
    assert sorted(p.name for p in (tmp_path / "tree").iterdir()) == sorted(p.name for p in tree)

    # Resumable: the same command with --resume finishes the rest.
    resumed = subprocess.run(
        [*cmd[: cmd.index("--rate-limit")], "--journal", str(journal), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{summary['migrated']} done earlier" in resumed.stderr
    for path, plaintext in tree.items():
        assert ids_in(path.read_bytes()) == ["local:new/1"]
        assert kmsenvelope.decrypt(path.read_bytes()) == plaintext


def test_library_interrupt_reports_and_leaves_the_policy_usable(
    tree: dict[Path, bytes], tmp_path: Path
) -> None:
    policy = CallPolicy(per_provider=2, rate_limits={"local": 20.0})
    engine = GuardedEngine(policy)
    plan = RewrapPlan.of(add=["local:new"], remove=["local:old"])
    store = FilesystemStore([tmp_path / "tree"])

    def ctrl_c_after_three(p: MigrationProgress) -> None:
        if p.done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(MigrationInterrupted) as caught:
        migrate(store, engine, plan, concurrency=2, progress=ctrl_c_after_three)
    report = caught.value.report
    assert report.interrupted
    assert not report.ok
    assert 3 <= len(report.migrated) < COUNT
    assert len(report.migrated) + report.left == COUNT
    assert isinstance(caught.value.interrupt, KeyboardInterrupt)
    # The same engine and policy serve the next job.
    again = migrate(store, engine, plan, concurrency=2)
    assert again.ok
    assert len(again.migrated) == COUNT - len(report.migrated)
