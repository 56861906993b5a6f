"""Envelopes in a SQLite table column (typically the compact form), updated in place."""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError
from .store import StoredItem, Writer

__all__ = ["SqliteStore"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _ident(name: str, what: str) -> str:
    if not _IDENT.match(name):
        raise ConfigError(f"invalid SQLite {what} name {name!r}")
    return f'"{name}"'


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ConfigError(f"column holds {type(value).__name__}, not an envelope (TEXT or BLOB)")


class SqliteStore:
    """Rows of ``table``: ``key_column`` identifies a row, ``value_column`` holds an envelope.

    The conditional write is ``UPDATE … WHERE key = ? AND value = <the value read>``, so a row
    changed by someone else meanwhile is never overwritten. TEXT stays TEXT, BLOB stays BLOB.
    """

    def __init__(
        self,
        path: str | Path,
        table: str,
        *,
        key_column: str = "id",
        value_column: str = "envelope",
    ) -> None:
        self._table = _ident(table, "table")
        self._key = _ident(key_column, "column")
        self._value = _ident(value_column, "column")
        self._lock = threading.Lock()
        self._written: dict[str, str] = {}
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # PRAGMA, not a trial SELECT: SQLite reads an unknown "quoted" column as a string.
        columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({self._table})")}
        for column in (key_column, value_column):
            if column not in columns:
                found = ", ".join(sorted(columns)) or "no such table"
                raise ConfigError(f"{path}: cannot read {table}.{column} (columns: {found})")

    def __repr__(self) -> str:
        return f"SqliteStore(table={self._table})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def list(self) -> Iterable[str]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._key} FROM {self._table} ORDER BY {self._key}"  # noqa: S608
            ).fetchall()
        return [str(r[0]) for r in rows]

    def _get(self, key: str) -> object:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._value} FROM {self._table} WHERE {self._key} = ?",  # noqa: S608
                (key,),
            ).fetchone()
        if row is None:
            raise ConfigError(f"row {key!r} disappeared")
        return row[0]

    def read(self, key: str) -> StoredItem:
        raw = _as_bytes(self._get(key))
        return StoredItem(io.BytesIO(raw), hashlib.sha256(raw).hexdigest())

    def pop_written_version(self, key: str) -> str | None:
        """The version token of the value the last successful write of ``key`` stored."""
        with self._lock:
            return self._written.pop(key, None)

    def write(self, key: str, version: str, writer: Writer) -> bool:
        """Conditional UPDATE: False (nothing written) if the row changed since it was read."""
        old = self._get(key)
        if hashlib.sha256(_as_bytes(old)).hexdigest() != version:
            return False
        buf = io.BytesIO()
        writer(buf)
        new: object = buf.getvalue()
        if isinstance(old, str):
            new = buf.getvalue().decode("ascii").strip()
        with self._lock:
            cur = self._db.execute(
                f"UPDATE {self._table} SET {self._value} = ? "  # noqa: S608
                f"WHERE {self._key} = ? AND {self._value} = ?",
                (new, key, old),
            )
            if cur.rowcount != 1:
                return False
            self._written[key] = hashlib.sha256(_as_bytes(new)).hexdigest()
        return True
