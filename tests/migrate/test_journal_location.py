"""Where ``migrate`` keeps its journal: one per job in the user's state directory."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from migrate_support import ids

import kmsenvelope
from kmsenvelope.cli import main
from kmsenvelope.local import Keystore


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "kmsenvelope" / "journals"


def make_tree(root: Path, count: int, key: str = "local:old") -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"f{i}.env").write_bytes(kmsenvelope.encrypt(f"{root.name} {i}".encode(), [key]))
    return root


@pytest.fixture
def keys(keystore: Keystore) -> Keystore:
    for name in ("old", "new"):
        keystore.create_key(name)
    return keystore


def journals(state: Path) -> list[Path]:
    return sorted(state.glob("*")) if state.exists() else []


def test_default_journal_is_private_in_the_state_directory(
    keys: Keystore, state: Path, tmp_path: Path
) -> None:
    work = Path.cwd()
    tree = make_tree(tmp_path / "bucket", 3)
    assert main(["migrate", str(tree), "--to", "local:new"]) == 0
    assert list(work.iterdir()) == []  # nothing left in the working directory
    [journal] = journals(state)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    first = json.loads(journal.read_text().splitlines()[0])
    assert first["job"]["paths"] == [str(tree.resolve())]


def test_readme_resume_after_a_finished_migration_of_something_else(
    keys: Keystore, state: Path, tmp_path: Path
) -> None:
    other = make_tree(tmp_path / "other", 2)
    assert main(["migrate", str(other), "--to", "local:new"]) == 0
    bucket = make_tree(tmp_path / "bucket", 3)
    code = main(["migrate", str(bucket), "--to", "local:new", "--remove-provider", "x", "--resume"])
    assert code == 0
    assert all(ids(p) == ["local:old/1", "local:new/1"] for p in bucket.iterdir())
    assert len(journals(state)) == 2  # one per job


def test_an_unfinished_job_does_not_block_another(
    keys: Keystore, keystore: Keystore, state: Path, tmp_path: Path
) -> None:
    keystore.create_key("gone")
    broken = make_tree(tmp_path / "broken", 2)
    (broken / "bad.env").write_bytes(kmsenvelope.encrypt(b"x", ["local:gone"]))
    keystore.rotate("gone")
    keystore.destroy_version("gone", 1)
    assert main(["migrate", str(broken), "--to", "local:new"]) == 13  # journal left unfinished
    bucket = make_tree(tmp_path / "bucket", 2)
    assert main(["migrate", str(bucket), "--to", "local:new"]) == 0
    # The unfinished one still asks for --resume, and resumes where it stopped.
    assert main(["migrate", str(broken), "--to", "local:new"]) == 2
    assert main(["migrate", str(broken), "--to", "local:new", "--resume"]) == 13


def test_explicit_journal_path_and_finished_journals_never_block(
    keys: Keystore, state: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "job.journal"
    a = make_tree(tmp_path / "a", 2)
    assert main(["migrate", str(a), "--to", "local:new", "--journal", str(journal)]) == 0
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert journals(state) == []
    b = make_tree(tmp_path / "b", 2)
    code = main(["migrate", str(b), "--to", "local:new", "--journal", str(journal), "--resume"])
    assert code == 0  # the finished journal of job a is replaced, not "a different migration"
    first = json.loads(journal.read_text().splitlines()[0])
    assert first["job"]["paths"] == [str(b.resolve())]


def test_same_job_in_any_option_order_finds_its_journal(
    keys: Keystore, state: Path, tmp_path: Path
) -> None:
    keys.create_key("more")
    tree = make_tree(tmp_path / "t", 2)
    assert main(["migrate", str(tree), "--to", "local:new", "--to", "local:more"]) == 0
    assert main(["migrate", "--to", "local:more", "--to", "local:new", str(tree), "--resume"]) == 0
    assert len(journals(state)) == 1
