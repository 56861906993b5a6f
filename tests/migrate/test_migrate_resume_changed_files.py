"""A journal never makes a later run skip work: a file changed since it was journaled is
looked at again, whether the earlier run finished or was interrupted (issue 11 item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from migrate_support import add_unreadable, empty_tree, ids, with_keys

import kmsenvelope
from kmsenvelope.cli import main
from kmsenvelope.errors import ConfigError
from kmsenvelope.local import Keystore
from kmsenvelope.migrate import Journal


@pytest.fixture
def tree(keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    with_keys(keystore, tmp_path, monkeypatch, "k1", "k2")
    root = empty_tree(tmp_path)
    for name in ("a.env", "b.env"):
        (root / name).write_bytes(kmsenvelope.encrypt(name.encode(), ["local:k1"]))
    return root


def summary(capsys: pytest.CaptureFixture[str]) -> str:
    return next(line for line in capsys.readouterr().err.splitlines() if " items: " in line)


def test_resume_after_a_finished_run_redoes_a_replaced_file(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", str(tree), "--to", "local:k2"]) == 0
    capsys.readouterr()
    replaced = tree / "a.env"
    replaced.write_bytes(kmsenvelope.encrypt(b"replaced", ["local:k1"]))  # lacks local:k2
    assert main(["migrate", str(tree), "--to", "local:k2", "--resume"]) == 0
    line = summary(capsys)
    assert "1 migrated" in line, line
    assert "1 done earlier" in line, line  # b.env: unchanged since it was journaled
    assert ids(replaced) == ["local:k1/1", "local:k2/1"]
    assert kmsenvelope.decrypt(replaced.read_bytes()) == b"replaced"
    # And once more: nothing changed, nothing to do.
    assert main(["migrate", str(tree), "--to", "local:k2", "--resume"]) == 0
    assert "2 done earlier" in summary(capsys)


def test_resume_of_an_unfinished_run_redoes_a_file_changed_since(
    tree: Path, keystore: Keystore, capsys: pytest.CaptureFixture[str]
) -> None:
    add_unreadable(keystore, tree / "bad.env")
    assert main(["migrate", str(tree), "--to", "local:k2"]) == 13  # journal left unfinished
    capsys.readouterr()
    changed = tree / "b.env"
    changed.write_bytes(kmsenvelope.encrypt(b"changed", ["local:k1"]))
    assert main(["migrate", str(tree), "--to", "local:k2", "--resume"]) == 13  # bad.env again
    line = summary(capsys)
    assert "1 migrated" in line, line
    assert "1 done earlier" in line, line
    assert "1 failed" in line, line
    assert ids(changed) == ["local:k1/1", "local:k2/1"]


def test_an_interrupted_resume_of_a_finished_journal_still_needs_resume(tmp_path: Path) -> None:
    """A journal resumed after it finished is unfinished again until the resumed run ends."""
    path = tmp_path / "j"
    job = {"to": ["a"]}
    first = Journal.open(path, job, resume=False)
    first.record("x", "done", version="v1")
    first.complete({})
    first.close()
    again = Journal.open(path, job, resume=True)
    again.record("y", "done", version="v2")
    again.close()  # killed before complete()
    with pytest.raises(ConfigError, match="--resume"):
        Journal.open(path, job, resume=False)
    resumed = Journal.open(path, job, resume=True)
    assert resumed.finished("y", "v2") == ("done", None)
    assert resumed.finished("y", "changed") is None
    resumed.close()
