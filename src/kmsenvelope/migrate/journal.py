"""The migration journal: what each item's outcome was, so a killed job can resume exactly.

JSON lines, each synced to disk before the job moves on: a first line describing the job,
then one line per finished item (``done``, ``unchanged``, ``skipped``, ``failed``,
``conflict``), and ``complete`` at the end. Items recorded as done, unchanged or skipped are
not touched again on ``--resume``; failed and conflicting ones are retried.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..local.files import drop_torn_tail

__all__ = ["FINAL", "Journal"]

FORMAT = "kmsenvelope-migrate-journal/1"
FINAL = frozenset({"done", "unchanged", "skipped"})


class Journal:
    """An append-only, fsynced record of a migration job."""

    def __init__(self, path: Path, statuses: dict[str, str], complete: bool) -> None:
        self.path = path
        self._statuses = statuses
        self.was_complete = complete
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @classmethod
    def open(cls, path: str | os.PathLike[str], job: Mapping[str, Any], *, resume: bool) -> Journal:
        """Start a journal, or with ``resume`` continue the one at ``path`` (if any)."""
        target = Path(path)
        if not target.exists():
            journal = cls(target, {}, False)
            journal._append({"format": FORMAT, "job": dict(job), "started": time.time()})
            return journal
        statuses, spec, complete = cls._load(target)
        if not resume:
            if not complete:
                raise ConfigError(
                    f"{target} holds an unfinished migration: pass --resume to continue it, "
                    "or delete it to start over"
                )
            target.unlink()
            return cls.open(target, job, resume=False)
        if spec != dict(job):
            raise ConfigError(
                f"{target} belongs to a different migration (its job: {json.dumps(spec)}); "
                "resume with the same targets, or delete it"
            )
        drop_torn_tail(target)
        journal = cls(target, statuses, complete)
        journal._append({"resumed": time.time()})
        return journal

    @staticmethod
    def _load(path: Path) -> tuple[dict[str, str], dict[str, Any], bool]:
        statuses: dict[str, str] = {}
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
                    statuses[str(entry["key"])] = str(entry["status"])
                elif "complete" in entry:
                    complete = True
        if spec is None:
            raise ConfigError(f"{path} is empty or not a kmsenvelope migration journal")
        return statuses, spec, complete

    def _append(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True).encode() + b"\n"
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    def status(self, key: str) -> str | None:
        """The last recorded outcome of ``key`` (None if never finished)."""
        return self._statuses.get(key)

    def record(self, key: str, status: str, reason: str | None = None) -> None:
        entry: dict[str, Any] = {"key": key, "status": status}
        if reason:
            entry["reason"] = reason
        self._append(entry)
        with self._lock:
            self._statuses[key] = status

    def complete(self, summary: Mapping[str, Any]) -> None:
        self._append({"complete": time.time(), "summary": dict(summary)})

    def close(self) -> None:
        os.close(self._fd)
