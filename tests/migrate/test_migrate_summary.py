"""The summary line counts what happened -- or, in a dry run, what would happen."""

from __future__ import annotations

from pathlib import Path

import pytest
from migrate_support import add_unreadable, empty_tree, with_keys

import kmsenvelope
from kmsenvelope.cli import main
from kmsenvelope.local import Keystore


@pytest.fixture
def tree(keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    with_keys(keystore, tmp_path, monkeypatch, "old", "new")
    root = empty_tree(tmp_path)
    for i in range(5):
        (root / f"f{i}.env").write_bytes(kmsenvelope.encrypt(f"data {i}".encode(), ["local:old"]))
    (root / "README").write_text("not an envelope")
    return root


def last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_dry_run_counts_what_would_be_migrated(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", str(tree), "--to", "local:new", "--dry-run"]) == 0
    line = last_line(capsys)
    assert line.startswith("dry run: 6 items: 5 would be migrated, 0 already up to date")
    assert "1 skipped (not envelopes)" in line
    assert "0 migrated" not in line


def test_resume_counts_a_non_envelope_as_skipped_not_done(
    tree: Path, keystore: Keystore, capsys: pytest.CaptureFixture[str]
) -> None:
    add_unreadable(keystore, tree / "bad.env")
    assert main(["migrate", str(tree), "--to", "local:new"]) == 13  # unfinished: resumable
    capsys.readouterr()
    assert main(["migrate", str(tree), "--to", "local:new", "--resume"]) == 13
    line = capsys.readouterr().err.strip().splitlines()
    summary = next(s for s in line if s.startswith("7 items:"))
    assert "5 done earlier" in summary
    assert "1 skipped (not envelopes)" in summary
    assert "1 failed" in summary
