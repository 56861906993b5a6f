"""Symbolic links: one named on the command line is followed (its target re-written atomically,
the link left a link); inside a directory walk links are skipped and reported, never followed
(issue 10, output paths)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from migrate_support import ids, with_keys

import kmsenvelope
from kmsenvelope.cli import main
from kmsenvelope.local import Keystore


@pytest.fixture
def keys(keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Keystore:
    return with_keys(keystore, tmp_path, monkeypatch, "old", "new")


def seal(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(kmsenvelope.encrypt(data, ["local:old"]))
    return path


def test_rewrap_follows_a_named_symlink_and_keeps_it_a_link(
    keys: Keystore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = seal(tmp_path / "data" / "real.env", b"through the link")
    mode = 0o640
    real.chmod(mode)
    inode = real.stat().st_ino
    link = tmp_path / "link.env"
    link.symlink_to(os.path.relpath(real, tmp_path))  # relative
    chain = tmp_path / "chain.env"
    chain.symlink_to(link.name)  # a link to a link
    assert main(["rewrap", "--add", "local:new", str(chain)]) == 0
    assert f"rewrapped {chain}" in capsys.readouterr().err
    assert chain.is_symlink()
    assert link.is_symlink()
    assert not real.is_symlink()
    assert real.stat().st_ino != inode  # replaced by rename, not written in place
    assert real.stat().st_mode & 0o777 == mode
    assert ids(real) == ["local:old/1", "local:new/1"]
    assert kmsenvelope.decrypt(real.read_bytes()) == b"through the link"
    assert sorted(p.name for p in real.parent.iterdir()) == ["real.env"]  # no temporary left


def test_migrate_follows_a_named_symlink(
    keys: Keystore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = seal(tmp_path / "real.env", b"named")
    link = tmp_path / "named-link.env"
    link.symlink_to(real)
    assert main(["migrate", str(link), "--to", "local:new"]) == 0
    assert "1 migrated" in capsys.readouterr().err
    assert link.is_symlink()
    assert ids(real) == ["local:old/1", "local:new/1"]


def test_migrate_skips_and_reports_symlinks_inside_a_tree(
    keys: Keystore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "tree"
    inside = seal(tree / "inside.env", b"in")
    outside = seal(tmp_path / "elsewhere" / "outside.env", b"out")
    seal(tmp_path / "elsewhere" / "deeper.env", b"deeper")
    before = {p: p.read_bytes() for p in (tmp_path / "elsewhere").iterdir()}
    links = {
        tree / "to-inside.env": inside,
        tree / "to-outside.env": outside,
        tree / "to-outside-dir": tmp_path / "elsewhere",
        tree / "dangling.env": tmp_path / "nowhere",
    }
    for link, target in links.items():
        link.symlink_to(target)
    report = tmp_path / "report.json"
    assert main(["migrate", str(tree), "--to", "local:new", "--report", str(report)]) == 0
    err = capsys.readouterr().err
    line = next(s for s in err.splitlines() if " items: " in s)
    assert line.startswith("5 items: 1 migrated"), line
    assert "4 skipped (symbolic links)" in line, line
    for link in links:
        assert f"skipped symbolic link (not followed): {link}" in err
        assert link.is_symlink()
    data = json.loads(report.read_text())
    assert data["skipped"] == [
        {"key": str(link), "reason": "symbolic link (not followed)"} for link in sorted(links)
    ]
    assert ids(inside) == ["local:old/1", "local:new/1"]  # once, as itself
    assert {p: p.read_bytes() for p in before} == before  # nothing outside the tree touched


def test_help_says_what_happens_to_symlinks(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("rewrap", "migrate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "symbolic link" in text, command
