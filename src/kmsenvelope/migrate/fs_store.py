"""Envelopes as files: paths and directory trees, replaced atomically by rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import ConfigError
from .store import StoredItem, Writer

__all__ = ["FilesystemStore"]

TEMP_SUFFIX = ".kmsenv-tmp"


def _version(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


class FilesystemStore:
    """Files named directly, and every regular file under the directories named.

    Symbolic links are not followed into (a link to a file is read through, and replacing
    it replaces the link with a file -- so links are skipped). Temporary files this store
    leaves after a crash (``.NAME.*.kmsenv-tmp``) are removed by :meth:`clean_temporary`.
    """

    def __init__(
        self, paths: Sequence[str | os.PathLike[str]], exclude: Iterable[Path] = ()
    ) -> None:
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
        path = Path(key)
        st = os.stat(path)
        if _version(st) != version:
            return False
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                os.fchmod(fh.fileno(), st.st_mode & 0o7777)
                os.fsync(fh.fileno())
            # Conditional write: compare again right before the rename.
            if _version(os.stat(path)) != version:
                os.unlink(tmp)
                return False
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
