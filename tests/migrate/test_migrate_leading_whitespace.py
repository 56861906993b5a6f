"""Migrate and rewrap follow the format's one whitespace rule (docs/format.md section 8): any
amount of SP, HT, CR, LF before the compact prefix; a binary envelope starts at its first byte
(issue 10 item 13)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from migrate_support import empty_tree, ids_in, with_keys

import kmsenvelope
from kmsenvelope.cli import main
from kmsenvelope.local import Keystore
from kmsenvelope.migrate import FilesystemStore, RewrapPlan, migrate

LEADS = {
    "spaces": b" " * 1000,
    "tabs": b"\t" * 300,
    "crs": b"\r" * 300,
    "lfs": b"\n" * 300,
    "mixed": b" \t\r\n" * 250,
}


@pytest.fixture
def tree(keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    with_keys(keystore, tmp_path, monkeypatch, "old", "new")
    root = empty_tree(tmp_path)
    for name, lead in LEADS.items():
        compact = kmsenvelope.encrypt(name.encode(), ["local:old"], armor=True)
        (root / f"{name}.txt").write_bytes(lead + compact)
    return root


def test_migrate_rewraps_compact_envelopes_after_any_allowed_whitespace(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    args = ["migrate", str(tree), "--to", "local:new", "--remove-provider", "local"]
    # --remove-provider local drops local:old; local:new is added first, so one remains.
    assert main([*args, "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert f"{len(LEADS)} migrated" in err, err
    assert "0 skipped" in err
    assert json.loads(report.read_text())["skipped"] == []
    for name in LEADS:
        data = (tree / f"{name}.txt").read_bytes()
        assert data.startswith(b"kmsenv1."), name  # compact stays compact (whitespace dropped)
        assert ids_in(data) == ["local:new/1"], name
        assert kmsenvelope.decrypt(data) == name.encode()


def test_rewrap_add_accepts_leading_whitespace(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(tree / f"{name}.txt") for name in LEADS]
    assert main(["rewrap", "--add", "local:new", *files]) == 0, capsys.readouterr().err
    for name in LEADS:
        data = (tree / f"{name}.txt").read_bytes()
        assert data.startswith(b"kmsenv1.")
        assert ids_in(data) == ["local:old/1", "local:new/1"]
        assert kmsenvelope.decrypt(data) == name.encode()


def test_what_the_rule_excludes_is_skipped_untouched(
    tree: Path, keystore: Keystore, capsys: pytest.CaptureFixture[str]
) -> None:
    """Vertical tab and form feed are not whitespace of the format; a binary envelope after
    whitespace is not an envelope; whitespace alone is not one either."""
    odd = {
        "vtab.txt": b"\v" + kmsenvelope.encrypt(b"v", ["local:old"], armor=True),
        "formfeed.txt": b"  \f" + kmsenvelope.encrypt(b"f", ["local:old"], armor=True),
        "spaced-binary.bin": b"   " + kmsenvelope.encrypt(b"b", ["local:old"]),
        "blank.txt": b" \t\r\n" * 2000,
        "text.txt": b"\n\n  kmsenv1 is not the prefix",
    }
    for name, data in odd.items():
        (tree / name).write_bytes(data)
    assert main(["migrate", str(tree), "--to", "local:new"]) == 0
    err = capsys.readouterr().err
    assert f"{len(LEADS)} migrated" in err
    assert f"{len(odd)} skipped" in err
    for name, data in odd.items():
        assert (tree / name).read_bytes() == data, name


def test_skipping_whitespace_reads_in_bounded_memory(keystore: Keystore, tmp_path: Path) -> None:
    """32 MiB of whitespace before the prefix is skipped a block at a time, not held."""
    keystore.create_key("old")
    keystore.create_key("new")
    path = tmp_path / "big-lead.txt"
    with path.open("wb") as fh:
        for _ in range(32):
            fh.write(b" \n" * (1 << 19))
        fh.write(kmsenvelope.encrypt(b"deep", ["local:old"], armor=True))
    tracemalloc.start()
    try:
        report = migrate(
            FilesystemStore([path]), kmsenvelope.Engine(), RewrapPlan.of(["local:new"])
        )
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.migrated == [str(path)], report.summary()
    assert peak < 8 << 20, peak
    data = path.read_bytes()
    assert data.startswith(b"kmsenv1.")
    assert kmsenvelope.decrypt(data) == b"deep"
