"""Envelopes as files: paths and directory trees, replaced atomically by rename."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import ConfigError
from .store import ItemSkipped, StoredItem, Writer

__all__ = ["FileOps", "FilesystemStore"]

TEMP_SUFFIX = ".kmsenv-tmp"


class FileOps:
    """The filesystem steps of the store's replace protocol, one method each.

    The protocol: a temporary file in the target's directory, the new content written and
    fsynced, the target's mode copied, an atomic rename over the target, then the directory
    fsynced so the rename itself survives a power cut. Tests pass a subclass that records the
    sequence or stops the process between two steps.
    """

    def make_temp(self, target: Path) -> tuple[int, str]:
        """Create ``.NAME.*.kmsenv-tmp`` next to ``target``, owner-only; its fd and path."""
        return tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)

    def fsync(self, fd: int) -> None:
        """Flush a file's content to stable storage."""
        os.fsync(fd)

    def fchmod(self, fd: int, mode: int) -> None:
        os.fchmod(fd, mode)

    def replace(self, src: str, dst: Path) -> None:
        """Atomically rename ``src`` over ``dst``."""
        os.replace(src, dst)

    def fsync_dir(self, directory: Path) -> None:
        """Flush a directory's entries (a rename in it) to stable storage."""
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: str) -> None:
        os.unlink(path)


LINK_SKIPPED = "symbolic link (not followed)"


def _version(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class FilesystemStore:
    """Files named directly, and every regular file under the directories named.

    A symbolic link named directly is followed: its target is read and replaced (atomically,
    in the target's directory), and the link stays a link. Inside a directory walk, links --
    to files or directories, inside the tree or not, dangling -- are never followed: they are
    listed and reported as skipped, as are other non-regular files (FIFOs, sockets, devices).
    Temporary files this store leaves after a crash (``.NAME.*.kmsenv-tmp``) are removed by
    :meth:`clean_temporary`.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        exclude: Iterable[Path] = (),
        *,
        ops: FileOps | None = None,
    ) -> None:
        self._ops = ops if ops is not None else FileOps()
        self.paths = [Path(p) for p in paths]
        for p in self.paths:
            if not p.exists():
                raise ConfigError(f"{p} does not exist")
        self._named = {str(p) for p in self.paths}
        self._exclude = {p.resolve() for p in exclude}
        self._lock = threading.Lock()
        self._written: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"FilesystemStore({[str(p) for p in self.paths]!r})"

    def _walk(self) -> Iterator[Path]:
        """Each path named (but a directory), then every entry under each directory named
        that is not a directory: files, links (to anything) and special files."""
        for root in self.paths:
            if not root.is_dir():
                yield root
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
                for name in sorted([*filenames, *links]):
                    yield Path(dirpath) / name

    def list(self) -> Iterable[str]:
        seen: set[str] = set()
        for path in self._walk():
            if path.name.endswith(TEMP_SUFFIX) and not path.is_symlink():
                continue
            if not path.is_symlink() and path.resolve() in self._exclude:
                continue
            key = str(path)
            if key not in seen:
                seen.add(key)
                yield key

    def clean_temporary(self) -> int:
        """Remove temporary files left by a killed job; return how many."""
        count = 0
        for path in self._walk():
            name = path.name
            if name.endswith(TEMP_SUFFIX) and name.startswith(".") and _is_regular(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    count += 1
        return count

    def _target(self, key: str) -> Path:
        """The file ``key`` stands for: a link named directly is resolved to its target."""
        return Path(os.path.realpath(key)) if key in self._named else Path(key)

    def read(self, key: str) -> StoredItem:
        """Open ``key`` (never blocking on a FIFO); a link met in a walk, or anything but a
        regular file, raises :class:`ItemSkipped`."""
        named = key in self._named
        if not named and os.path.islink(key):
            raise ItemSkipped(LINK_SKIPPED)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        if not named:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(key, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP and not named:  # became a link since it was listed
                raise ItemSkipped(LINK_SKIPPED) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ItemSkipped("not a regular file")
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return StoredItem(os.fdopen(fd, "rb"), _version(st))

    def pop_written_version(self, key: str) -> str | None:
        """The version token of the file the last successful write of ``key`` made."""
        with self._lock:
            return self._written.pop(key, None)

    def write(self, key: str, version: str, writer: Writer) -> bool:
        """Temporary file, fsync, conditional atomic rename, directory fsync (see FileOps)."""
        written = self._replace(key, version, writer)
        if written is None:
            return False
        with self._lock:
            self._written[key] = written
        return True

    def _replace(self, key: str, version: str, writer: Writer) -> str | None:
        """The replace protocol; the new file's version token (the renamed temporary file
        keeps its inode, size and mtime), or None if the file changed since it was read."""
        ops = self._ops
        path = self._target(key)
        st = os.stat(path)
        if _version(st) != version:
            return None
        fd, tmp = ops.make_temp(path)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                ops.fchmod(fh.fileno(), st.st_mode & 0o7777)
                ops.fsync(fh.fileno())
                written = _version(os.fstat(fh.fileno()))
            # Conditional write: compare again right before the rename.
            if _version(os.stat(path)) != version:
                ops.unlink(tmp)
                return None
            ops.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        ops.fsync_dir(path.parent)
        return written
