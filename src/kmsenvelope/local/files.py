"""The keystore's file rules: its files are regular files only (``KeystoreError`` otherwise),
and its ``.lock`` serializes changes across processes; the mechanics are ``safe_files``."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from ..errors import KeystoreError
from ..safe_files import FileLock, Refusal, locked

__all__ = ["KEYSTORE_FILES", "keystore_lock", "store_lock"]

KEYSTORE_FILES = Refusal(KeystoreError, "keystore files must be regular files (refusing to use it)")
"""How a keystore file that is a symbolic link, FIFO, device or directory is refused."""


def store_lock(directory: Path, *, exclusive: bool = True) -> AbstractContextManager[None]:
    """The keystore's ``flock`` (exclusive for a change, shared for a read), opened for one use."""
    return locked(directory / ".lock", exclusive=exclusive, refuse=KEYSTORE_FILES)


def keystore_lock(directory: Path) -> FileLock:
    """The keystore's ``flock`` through a descriptor kept open (one per unlocked keystore):
    re-entrant, so the audit log's syncs can take it whether or not an operation holds it."""
    return FileLock(directory / ".lock", refuse=KEYSTORE_FILES)
