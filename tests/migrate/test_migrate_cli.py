"""``kmsenvelope rewrap`` and ``kmsenvelope migrate`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kmsenvelope
from kmsenvelope.local import Keystore


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ids(path: Path) -> list[str]:
    return [r.key_id for r in kmsenvelope.inspect_envelope(path.read_bytes()).recipients]


@pytest.fixture
def tree(keystore: Keystore, tmp_path: Path) -> Path:
    keystore.create_key("old")
    keystore.create_key("new")
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        (root / f"f{i}.env").write_bytes(kmsenvelope.encrypt(f"data {i}".encode(), ["local:old"]))
    (root / "sub" / "compact.txt").write_bytes(
        kmsenvelope.encrypt(b"compact", ["local:old"], armor=True)
    )
    (root / "sub" / "README").write_text("hello")
    return root


def test_migrate_tree_with_report(tree: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = run(
        "migrate",
        str(tree),
        "--to",
        "local:new",
        "--remove",
        "local:old",
        "--report",
        str(report),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 migrated" in proc.stderr
    assert "1 skipped" in proc.stderr
    data = json.loads(report.read_text())
    assert data["ok"] is True
    assert data["summary"]["migrated"] == 6
    assert data["skipped"] == [{"key": str(tree / "sub" / "README"), "reason": "not an envelope"}]
    for path in [*tree.glob("*.env"), tree / "sub" / "compact.txt"]:
        assert ids(path) == ["local:new/1"]
    assert kmsenvelope.decrypt((tree / "sub" / "compact.txt").read_bytes()) == b"compact"
    assert (tree / "sub" / "compact.txt").read_bytes().startswith(b"kmsenv1.")


def test_dry_run_writes_nothing(tree: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    proc = run(
        "migrate",
        str(tree),
        "--to",
        "local:new",
        "--remove-provider",
        "local",
        "--dry-run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "would add local:new; remove local:old/1" in proc.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / ".kmsenvelope-migrate.journal").exists()


def test_unfinished_journal_needs_resume(tree: Path, tmp_path: Path) -> None:
    journal = tmp_path / ".kmsenvelope-migrate.journal"
    header = {"format": "kmsenvelope-migrate-journal/1", "job": {"x": 1}, "started": 0}
    journal.write_text(json.dumps(header) + "\n")
    named = ("--journal", str(journal))
    proc = run("migrate", str(tree), "--to", "local:new", *named, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--resume" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("migrate", str(tree), "--to", "local:new", "--resume", *named, cwd=tmp_path)
    assert proc.returncode == 2
    assert "different migration" in proc.stderr
    journal.unlink()
    proc = run("migrate", str(tree), "--to", "local:new", "--resume", *named, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # --resume with no journal starts a new job


def test_failed_envelope_reported_and_exit_13(
    tree: Path, tmp_path: Path, keystore: Keystore
) -> None:
    keystore.create_key("gone")
    bad = tree / "bad.env"
    bad.write_bytes(kmsenvelope.encrypt(b"x", ["local:gone"]))
    keystore.rotate("gone")
    keystore.destroy_version("gone", 1)
    report = tmp_path / "r.json"
    proc = run(
        "migrate",
        str(tree),
        "--to",
        "local:new",
        "--remove",
        "local:old",
        "--remove",
        "local:gone",
        "--report",
        str(report),
        cwd=tmp_path,
    )
    assert proc.returncode == 13, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("kmsenvelope: error:")
    data = json.loads(report.read_text())
    assert [f["key"] for f in data["failed"]] == [str(bad)]
    assert "destroyed" in data["failed"][0]["reason"]
    assert data["summary"]["migrated"] == 6


@pytest.mark.parametrize(
    "args",
    [
        ["migrate", "TREE"],  # --to is required
        [
            "migrate",
            "TREE",
            "--to",
            "local:new",
            "--remove",
            "local:old",
            "--remove-provider",
            "local",
        ],
        ["migrate", "TREE", "--to", "local:new", "--concurrency", "0"],
        ["migrate", "/no/such/dir", "--to", "local:new"],
        ["migrate", "TREE", "--to", "local:new", "--rate-limit", "local=fast"],
        ["rewrap", "TREE/f0.env"],  # nothing to do
        ["rewrap", "/no/such/file", "--add", "local:new"],
    ],
)
def test_bad_arguments_exit_2(tree: Path, tmp_path: Path, args: list[str]) -> None:
    proc = run(*[a.replace("TREE", str(tree)) for a in args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr


def test_rewrap_files_in_place(tree: Path, tmp_path: Path, keystore: Keystore) -> None:
    f0, f1 = tree / "f0.env", tree / "f1.env"
    os.chmod(f0, 0o640)
    proc = run("rewrap", str(f0), str(f1), "--add", "local:new", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ids(f0) == ["local:old/1", "local:new/1"]
    assert oct(f0.stat().st_mode & 0o777) == "0o640"  # permissions kept
    proc = run("rewrap", str(f0), "--remove-provider", "local", cwd=tmp_path)
    assert proc.returncode == 13
    assert "every recipient" in proc.stderr
    assert ids(f0) == ["local:old/1", "local:new/1"]  # untouched
    keystore.rotate("new")
    proc = run("rewrap", str(f0), "--rotate", "--remove", "local:old", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ids(f0) == ["local:new/2"]
    assert kmsenvelope.decrypt(f0.read_bytes()) == b"data 0"
    proc = run("rewrap", str(tree / "sub" / "README"), "--add", "local:new", cwd=tmp_path)
    assert proc.returncode == 13
    assert "not a kmsenvelope envelope" in proc.stderr
