"""safe_files.atomic_write (keystore files, backups): the data is fsynced in a temp file in the
same directory before it is renamed over the target, and the directory is fsynced after. A
missing fsync is invisible to a SIGKILL test, so the order of calls is checked directly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmsenvelope import safe_files


def test_fsync_then_rename_then_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "keystore.json"
    target.write_bytes(b"old")
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str | os.PathLike[str]) -> None:
        calls.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(safe_files.os, "fsync", fsync)
    monkeypatch.setattr(safe_files.os, "replace", replace)
    safe_files.atomic_write(target, b"new")

    assert target.read_bytes() == b"new"
    kinds = [kind for kind, _ in calls]
    assert kinds == ["fsync", "replace", "fsync"], calls
    temp = calls[1][1]
    assert calls[0][1] == temp  # the file fsynced is the one renamed into place
    assert Path(temp).parent == tmp_path  # same directory: the rename is atomic
    assert calls[2][1] == str(tmp_path)  # then the directory entry is made durable
    assert oct(target.stat().st_mode & 0o777) == "0o600"
