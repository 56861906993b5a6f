"""Envelopes as files: paths and directory trees, replaced atomically by rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import ConfigError
from .store import StoredItem, Writer

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


def _version(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


class FilesystemStore:
    """Files named directly, and every regular file under the directories named.

    Symbolic links are not followed into (a link to a file is read through, and replacing
    it replaces the link with a file -- so links are skipped). Temporary files this store
    leaves after a crash (``.NAME.*.kmsenv-tmp``) are removed by :meth:`clean_temporary`.
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
        self._exclude = {p.resolve() for p in exclude}

    def __repr__(self) -> str:
        return f"FilesystemStore({[str(p) for p in self.paths]!r})"

    def _walk(self) -> Iterator[Path]:
        for root in self.paths:
            if root.is_file() and not root.is_symlink():
                yield root
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    path = Path(dirpath) / name
                    if path.is_symlink() or not path.is_file():
                        continue
                    yield path

    def list(self) -> Iterable[str]:
        seen: set[str] = set()
        for path in self._walk():
            if path.name.endswith(TEMP_SUFFIX) or path.resolve() in self._exclude:
                continue
            key = str(path)
            if key not in seen:
                seen.add(key)
                yield key

    def clean_temporary(self) -> int:
        """Remove temporary files left by a killed job; return how many."""
        count = 0
        for path in self._walk():
            if path.name.endswith(TEMP_SUFFIX) and path.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    count += 1
        return count

    def read(self, key: str) -> StoredItem:
        fh = open(key, "rb")  # noqa: SIM115 - the caller closes it
        return StoredItem(fh, _version(os.fstat(fh.fileno())))

    def write(self, key: str, version: str, writer: Writer) -> bool:
        """Temporary file, fsync, conditional atomic rename, directory fsync (see FileOps)."""
        ops = self._ops
        path = Path(key)
        st = os.stat(path)
        if _version(st) != version:
            return False
        fd, tmp = ops.make_temp(path)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                ops.fchmod(fh.fileno(), st.st_mode & 0o7777)
                ops.fsync(fh.fileno())
            # Conditional write: compare again right before the rename.
            if _version(os.stat(path)) != version:
                ops.unlink(tmp)
                return False
            ops.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        ops.fsync_dir(path.parent)
        return True
