"""``rewrap``/``migrate`` options as users type them: one value per option, repeated."""

from __future__ import annotations

from pathlib import Path

import pytest
from migrate_support import ids

import kmsenvelope
from kmsenvelope.cli import main
from kmsenvelope.local import Keystore


@pytest.fixture
def tree(keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in ("old", "new", "other"):
        keystore.create_key(name)
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(3):
        (root / f"f{i}.env").write_bytes(kmsenvelope.encrypt(f"data {i}".encode(), ["local:old"]))
    return root


def test_rewrap_add_before_the_file(tree: Path) -> None:
    f0 = tree / "f0.env"
    assert main(["rewrap", "--add", "local:new", str(f0)]) == 0
    assert ids(f0) == ["local:old/1", "local:new/1"]
    assert main(["rewrap", "--remove", "local:old", "--remove-provider", "nothing", str(f0)]) == 0
    assert ids(f0) == ["local:new/1"]


def test_migrate_repeated_to_before_the_path(tree: Path) -> None:
    code = main(
        ["migrate", "--to", "local:new", "--to", "local:other", "--remove", "local:old", str(tree)]
    )
    assert code == 0
    for path in tree.iterdir():
        assert ids(path) == ["local:new/1", "local:other/1"]


def test_duplicate_targets_are_one_recipient(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", str(tree), "--to", "local:new", "--to", "local:new", "--dry-run"]) == 0
    err = capsys.readouterr().err
    # Named once, not "would add local:new, local:new".
    assert f"would add local:new: {tree / 'f0.env'}" in err
    assert main(["migrate", str(tree), "--to", "local:new", "--to", "local:new"]) == 0
    f1 = tree / "f1.env"
    assert ids(f1) == ["local:old/1", "local:new/1"]
    assert main(["rewrap", str(f1), "--add", "local:other", "--add", "local:other"]) == 0
    assert ids(f1) == ["local:old/1", "local:new/1", "local:other/1"]


def test_allow_widens_what_rewrap_and_migrate_may_unwrap_with(
    tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # allowed_keys pins the new keys only: the old recipient may not be contacted ...
    monkeypatch.setenv("KMSENVELOPE_ALLOWED_KEYS", "local:new*,local:other*")
    f0 = tree / "f0.env"
    assert main(["rewrap", str(f0), "--add", "local:new"]) == 13
    assert "local:old/1" in capsys.readouterr().err
    assert ids(f0) == ["local:old/1"]
    # ... until the command line allows it, through the command line's own engine.
    assert main(["rewrap", str(f0), "--add", "local:new", "--allow", "local:old*"]) == 0
    assert ids(f0) == ["local:old/1", "local:new/1"]
    code = main(
        ["migrate", str(tree), "--to", "local:other", "--allow", "local:old*", "--allow", "x:*"]
    )
    assert code == 0, capsys.readouterr().err
    assert all(ids(p)[-1] == "local:other/1" for p in tree.iterdir())


@pytest.mark.parametrize("command", ["rewrap", "migrate"])
def test_allow_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--allow PATTERN" in out
    assert "also allow key URIs matching PATTERN to be contacted to unwrap" in out
