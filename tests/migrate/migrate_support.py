"""Helpers shared by the migrate tests (not collected: the name has no ``test_`` prefix)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import kmsenvelope
from kmsenvelope.local import Keystore


def ids(path: Path) -> list[str]:
    """The recipient key ids of the envelope stored at ``path``."""
    return ids_in(path.read_bytes())


def ids_in(data: bytes) -> list[str]:
    """The recipient key ids of the envelope ``data``."""
    return [r.key_id for r in kmsenvelope.inspect_envelope(data).recipients]


def with_keys(
    keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *names: str
) -> Keystore:
    """``keystore`` holding new keys ``names``; journals go under ``tmp_path``, not the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in names:
        keystore.create_key(name)
    return keystore


def empty_tree(tmp_path: Path) -> Path:
    """A new, empty ``tmp_path/tree`` directory to migrate."""
    root = tmp_path / "tree"
    root.mkdir()
    return root


def migrate_command(tree: Path, *extra: str) -> list[str]:
    """``python -m kmsenvelope migrate TREE`` from ``local:old`` to ``local:new``, two workers,
    then ``extra`` options."""
    return [
        sys.executable,
        "-m",
        "kmsenvelope",
        "migrate",
        str(tree),
        "--to",
        "local:new",
        "--remove",
        "local:old",
        "--concurrency",
        "2",
        *extra,
    ]


def add_unreadable(keystore: Keystore, path: Path) -> None:
    """Write at ``path`` an envelope for a new key ``gone`` whose only version is destroyed, so
    migrating it fails and leaves the run unfinished."""
    keystore.create_key("gone")
    path.write_bytes(kmsenvelope.encrypt(b"x", ["local:gone"]))
    keystore.rotate("gone")
    keystore.destroy_version("gone", 1)
