"""The migration journal: what each item's outcome was, so a killed job can resume exactly.

JSON lines, each synced to disk before the job moves on: a first line describing the job,
then one line per finished item (``done``, ``unchanged``, ``skipped``, ``failed``,
``conflict``, with the item's version token), and ``complete`` at the end. On ``--resume``,
items recorded as done, unchanged or skipped *and still at the recorded version* are not
touched again; failed and conflicting ones, and any item changed since, are looked at again.

The CLI keeps one journal per job in the user's state directory, named by a digest of what the
job is (:func:`default_journal_path`), so two jobs never share one. Journals are owner-only
(0600, in a 0700 directory): they list every file of the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..safe_files import drop_torn_tail

__all__ = ["FINAL", "Journal", "default_journal_path"]

FORMAT = "kmsenvelope-migrate-journal/1"
FINAL = frozenset({"done", "unchanged", "skipped"})


@dataclass(frozen=True, slots=True)
class _Entry:
    """The last recorded outcome of one item, and its version token when recorded."""

    status: str
    reason: str | None = None
    version: str | None = None


def default_journal_path(job: Mapping[str, Any]) -> Path:
    """Where the journal of ``job`` lives by default: ``user_state_dir/journals/``, one file per
    job, named by a digest of the job's description (its store and plan), so that two different
    jobs never collide and the same job always finds its own journal again. Creates the
    owner-only directory if needed."""
    import platformdirs

    canonical = json.dumps(dict(job), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    directory = Path(platformdirs.user_state_dir("kmsenvelope")) / "journals"
    _private_dir(directory)
    return directory / f"migrate-{digest}.journal"


def _private_dir(directory: Path) -> None:
    """Create ``directory`` (and the state directory above it) owner-only if missing."""
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.mkdir(exist_ok=True, mode=0o700)


class Journal:
    """An append-only, fsynced record of a migration job."""

    def __init__(self, path: Path, entries: dict[str, _Entry], complete: bool) -> None:
        self.path = path
        self._entries = entries
        self.was_complete = complete
        self._lock = threading.Lock()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(self._fd, 0o600)  # owner-only even if someone made the file before us
        except OSError:
            os.close(self._fd)
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], job: Mapping[str, Any], *, resume: bool) -> Journal:
        """Start a journal, or with ``resume`` continue the one at ``path`` (if any).

        A finished journal never blocks a new job: it is replaced, unless ``resume`` asks to
        continue that very job (then items still at their recorded version are not touched
        again; changed ones are redone). An unfinished one is continued with ``resume`` (if it
        is the same job) and refused otherwise; a resumed journal is unfinished until the
        resumed run completes.
        """
        target = Path(path)
        if not target.exists():
            journal = cls(target, {}, False)
            journal._append({"format": FORMAT, "job": dict(job), "started": time.time()})
            return journal
        entries, spec, complete = cls._load(target)
        if complete and not (resume and spec == dict(job)):
            target.unlink()  # a finished job: start the new one afresh
            return cls.open(target, job, resume=False)
        if not resume:
            raise ConfigError(
                f"{target} holds an unfinished migration: pass --resume to continue it, "
                "or delete it to start over"
            )
        if spec != dict(job):
            raise ConfigError(
                f"{target} belongs to a different migration that has not finished (its job: "
                f"{json.dumps(spec)}); resume it with its own targets, or delete it"
            )
        drop_torn_tail(target)
        journal = cls(target, entries, complete)
        journal._append({"resumed": time.time()})  # unfinished again until complete()
        return journal

    @staticmethod
    def _load(path: Path) -> tuple[dict[str, _Entry], dict[str, Any], bool]:
        entries: dict[str, _Entry] = {}
        spec: dict[str, Any] | None = None
        complete = False
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    break  # a torn last line from a crash: that item simply runs again
                try:
                    entry = json.loads(raw)
                except ValueError:
                    raise ConfigError(f"{path}:{lineno}: journal line is not JSON") from None
                if lineno == 1:
                    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
                        raise ConfigError(f"{path} is not a kmsenvelope migration journal")
                    spec = entry["job"]
                elif "key" in entry:
                    reason, version = entry.get("reason"), entry.get("version")
                    entries[str(entry["key"])] = _Entry(
                        str(entry["status"]),
                        str(reason) if reason is not None else None,
                        str(version) if version is not None else None,
                    )
                elif "complete" in entry:
                    complete = True
                elif "resumed" in entry:
                    complete = False  # a resumed run that has not completed (yet)
        if spec is None:
            raise ConfigError(f"{path} is empty or not a kmsenvelope migration journal")
        return entries, spec, complete

    def _append(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True).encode() + b"\n"
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    def status(self, key: str) -> str | None:
        """The last recorded outcome of ``key`` (None if never finished)."""
        with self._lock:
            found = self._entries.get(key)
        return found.status if found is not None else None

    def finished(self, key: str, version: str) -> tuple[str, str | None] | None:
        """``(status, reason)`` if ``key`` was finished (done, unchanged, skipped) and is still
        at the version then recorded; None if it must be looked at (again)."""
        with self._lock:
            found = self._entries.get(key)
        if found is None or found.status not in FINAL or found.version != version:
            return None  # never finished, failed, changed since, or no version recorded
        return found.status, found.reason

    def record(
        self, key: str, status: str, reason: str | None = None, *, version: str | None = None
    ) -> None:
        """Append ``key``'s outcome; ``version`` is its version token after the outcome (what a
        resumed job compares to know the item has not changed since)."""
        entry: dict[str, Any] = {"key": key, "status": status}
        if reason:
            entry["reason"] = reason
        if version is not None:
            entry["version"] = version
        self._append(entry)
        with self._lock:
            self._entries[key] = _Entry(status, reason or None, version)

    def complete(self, summary: Mapping[str, Any]) -> None:
        self._append({"complete": time.time(), "summary": dict(summary)})

    def close(self) -> None:
        os.close(self._fd)
