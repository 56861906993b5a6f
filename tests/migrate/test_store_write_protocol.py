"""The filesystem store's replace protocol, step by step: temporary file, fsync, rename, fsync.

A SIGKILL test cannot see a missing fsync (the page cache survives the process), so these
tests watch the protocol itself through the store's ``FileOps`` seam -- every step really
happens on disk, the subclass only records it -- and kill a process between each two steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import BinaryIO

import pytest

from kmsenvelope.migrate import FileOps, FilesystemStore

OLD = b"old envelope bytes " * 300
NEW = b"NEW envelope bytes " * 400


class RecordingOps(FileOps):
    """Real filesystem calls, with what each one saw recorded in order."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []
        self.temp: str | None = None
        self.synced: dict[str, bytes] = {}  # temp path -> its content when fsynced

    def make_temp(self, target: Path) -> tuple[int, str]:
        fd, path = super().make_temp(target)
        self.temp = path
        self.steps.append(("make_temp", path))
        return fd, path

    def fchmod(self, fd: int, mode: int) -> None:
        self.steps.append(("fchmod", oct(mode)))
        super().fchmod(fd, mode)

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        assert self.temp is not None
        self.synced[self.temp] = Path(self.temp).read_bytes()
        self.steps.append(("fsync", self.temp))

    def replace(self, src: str, dst: Path) -> None:
        # What power loss could expose once the rename reaches the disk: the temporary
        # file's *durable* content, i.e. what it held when it was fsynced.
        assert self.synced.get(src) == Path(src).read_bytes(), "renamed without an fsync"
        self.steps.append(("replace", f"{src} -> {dst}"))
        super().replace(src, dst)

    def fsync_dir(self, directory: Path) -> None:
        self.steps.append(("fsync_dir", str(directory)))
        super().fsync_dir(directory)


def write_new(fh: BinaryIO) -> None:
    fh.write(NEW[:1000])
    fh.write(NEW[1000:])


def test_write_is_temp_fsync_rename_fsync_dir(tmp_path: Path) -> None:
    target = tmp_path / "dir" / "item.kmsenv"
    target.parent.mkdir()
    target.write_bytes(OLD)
    os.chmod(target, 0o640)
    inode = target.stat().st_ino
    ops = RecordingOps()
    store = FilesystemStore([target.parent], ops=ops)
    item = store.read(str(target))
    item.stream.close()

    assert store.write(str(target), item.version, write_new) is True

    assert [name for name, _ in ops.steps] == [
        "make_temp",
        "fchmod",
        "fsync",
        "replace",
        "fsync_dir",
    ]
    temp = Path(ops.steps[0][1])
    assert temp.parent == target.parent  # same directory: the rename is atomic
    assert temp.name.startswith(".item.kmsenv.")
    assert not temp.exists()
    assert ops.synced[str(temp)] == NEW  # the complete new content was durable before rename
    assert ops.steps[3][1] == f"{temp} -> {target}"
    assert ops.steps[4][1] == str(target.parent)  # the rename itself made durable
    assert target.read_bytes() == NEW
    assert target.stat().st_ino != inode  # replaced by a new file, never rewritten in place
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert list(store.list()) == [str(target)]


def test_conflicting_write_touches_nothing(tmp_path: Path) -> None:
    target = tmp_path / "item"
    target.write_bytes(OLD)
    ops = RecordingOps()
    store = FilesystemStore([tmp_path], ops=ops)
    item = store.read(str(target))
    item.stream.close()
    target.write_bytes(OLD + b"changed by the application")

    assert store.write(str(target), item.version, write_new) is False
    assert target.read_bytes() == OLD + b"changed by the application"
    assert "replace" not in [name for name, _ in ops.steps]
    assert [p.name for p in tmp_path.iterdir()] == ["item"]


# A child process writes through the store and dies (os._exit: no cleanup, like SIGKILL)
# just before one step of the protocol, or halfway through writing the new content.
CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from kmsenvelope.migrate import FileOps, FilesystemStore

    target, crash_at = Path(sys.argv[1]), sys.argv[2]
    NEW = b"NEW envelope bytes " * 400

    class CrashOps(FileOps):
        def _maybe_die(self, step):
            if step == crash_at:
                os._exit(77)

        def make_temp(self, target):
            self._maybe_die("make_temp")
            return super().make_temp(target)

        def fchmod(self, fd, mode):
            self._maybe_die("fchmod")
            super().fchmod(fd, mode)

        def fsync(self, fd):
            self._maybe_die("fsync")
            super().fsync(fd)

        def replace(self, src, dst):
            self._maybe_die("replace")
            super().replace(src, dst)

        def fsync_dir(self, directory):
            self._maybe_die("fsync_dir")
            super().fsync_dir(directory)

    def writer(fh):
        fh.write(NEW[: len(NEW) // 2])
        if crash_at == "mid-write":
            fh.flush()
            os._exit(77)
        fh.write(NEW[len(NEW) // 2 :])

    store = FilesystemStore([target.parent], ops=CrashOps())
    item = store.read(str(target))
    item.stream.close()
    store.write(str(target), item.version, writer)
    sys.exit(0)
    """
)

STEPS_BEFORE_RENAME = ["make_temp", "mid-write", "fchmod", "fsync", "replace"]


@pytest.mark.parametrize("crash_at", [*STEPS_BEFORE_RENAME, "fsync_dir"])
def test_crash_between_any_two_steps_leaves_old_or_new_never_torn(
    tmp_path: Path, crash_at: str
) -> None:
    target = tmp_path / "tree" / "item.kmsenv"
    target.parent.mkdir()
    target.write_bytes(OLD)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(target), crash_at],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 77, (crash_at, proc.returncode, proc.stderr)  # the step happened

    expected = OLD if crash_at in STEPS_BEFORE_RENAME else NEW
    assert target.read_bytes() == expected  # all old or all new, whatever the moment
    store = FilesystemStore([target.parent])
    assert list(store.list()) == [str(target)]  # a leftover temporary file is not an item
    store.clean_temporary()
    assert [p.name for p in target.parent.iterdir()] == ["item.kmsenv"]
    assert target.read_bytes() == expected
