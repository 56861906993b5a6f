"""Envelopes in a SQLite table column (typically the compact form), updated in place.

Reached from the command line as ``sqlite:///PATH?table=T&key=ID_COLUMN&column=ENVELOPE_COLUMN``
(:mod:`kmsenvelope.migrate.plugin`). Table and column names are identifiers only (letters,
digits, ``_``), always double-quoted in SQL; values are bound parameters, never SQL text.
Listing is keyset-paginated (``WHERE key > last ORDER BY key LIMIT n``), so a table of millions
of rows is never held in memory at once.
"""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError
from .store import ItemSkipped, StoredItem, Writer

__all__ = ["NOT_TEXT_SKIPPED", "NULL_SKIPPED", "PAGE_SIZE", "SqliteStore"]

PAGE_SIZE = 1000
"""Keys one listing query fetches (a page; the next starts after its last key)."""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NULL_SKIPPED = "NULL"
"""The reason a row whose envelope column is NULL is skipped (left alone)."""
NOT_TEXT_SKIPPED = "not TEXT or BLOB"
"""The reason a row whose envelope column holds a number is skipped (left alone)."""


def _ident(name: str, what: str) -> str:
    """``name`` double-quoted for SQL, if it is a plain identifier (else ``ConfigError``)."""
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise ConfigError(f"invalid SQLite {what} name {name!r} (letters, digits and '_' only)")
    return f'"{name}"'


def _as_bytes(value: object) -> bytes | None:
    """A TEXT or BLOB value as bytes; None for anything else (NULL, numbers)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return None


def _numeric_affinity(declared: str) -> bool:
    """Whether a column declared ``declared`` has INTEGER, REAL or NUMERIC affinity (SQLite's
    rules, section 3.1 of its datatype page): then an integer key bound as its text finds its
    row, so the listing need not remember the integer."""
    kind = declared.upper()
    if "INT" in kind:
        return True
    if any(text in kind for text in ("CHAR", "CLOB", "TEXT")):
        return False
    return bool(kind) and "BLOB" not in kind


def _connect(path: str | Path) -> sqlite3.Connection:
    """Open an existing database for reading and writing (never create one: a mistyped path
    is an error, not a new empty file)."""
    uri = Path(path).resolve().as_uri() + "?mode=rw"
    try:
        return sqlite3.connect(
            uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30
        )
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: cannot open the SQLite database ({exc})") from None


class SqliteStore:
    """Rows of ``table``: ``key_column`` identifies a row, ``value_column`` holds an envelope.

    The conditional write is ``UPDATE … WHERE key = ? AND value = <the value read>``, so a row
    changed by someone else meanwhile is never overwritten. TEXT stays TEXT, BLOB stays BLOB.
    Rows whose value is NULL, or not TEXT or BLOB, are skipped (left alone); rows whose key is
    NULL are not listed (nothing could address them).
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
        # Listed keys that their text would not find (BLOB, REAL, …; rare): their value.
        self._key_values: dict[str, object] = {}
        self._db = _connect(path)
        try:
            # PRAGMA, not a trial SELECT: SQLite reads an unknown "quoted" column as a string.
            info = self._db.execute(f"PRAGMA table_info({self._table})").fetchall()
        except sqlite3.Error as exc:
            self._db.close()
            raise ConfigError(f"{path}: cannot read the SQLite database ({exc})") from None
        columns = {row[1] for row in info}
        declared = {row[1]: str(row[2] or "") for row in info}
        self._numeric_key = _numeric_affinity(declared.get(key_column, ""))
        for column in (key_column, value_column):
            if column not in columns:
                self._db.close()
                found = ", ".join(sorted(columns)) or "no such table"
                raise ConfigError(f"{path}: cannot read {table}.{column} (columns: {found})")

    def __repr__(self) -> str:
        return f"SqliteStore(table={self._table})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def list(self) -> Iterator[str]:
        """Every row's key (as text), in key order, a page at a time; rows with a NULL key are
        left out, and a key on several rows is listed once."""
        first = (
            f"SELECT {self._key} FROM {self._table} "  # noqa: S608
            f"WHERE {self._key} IS NOT NULL ORDER BY {self._key} LIMIT ?"
        )
        after = (
            f"SELECT {self._key} FROM {self._table} "  # noqa: S608
            f"WHERE {self._key} > ? ORDER BY {self._key} LIMIT ?"
        )
        last: object = None
        started = False
        while True:
            with self._lock:
                query, args = (after, (last, PAGE_SIZE)) if started else (first, (PAGE_SIZE,))
                rows = self._db.execute(query, args).fetchall()
            for (value,) in rows:
                if started and type(value) is type(last) and value == last:
                    continue  # the same key on another row
                started, last = True, value
                if isinstance(value, str):
                    yield value
                    continue
                key = str(value)
                if not (isinstance(value, int) and self._numeric_key):
                    with self._lock:
                        self._key_values[key] = value  # bound as it is stored (BLOB, REAL, …)
                yield key
            if len(rows) < PAGE_SIZE:
                return

    def _get(self, key: str) -> object:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._value} FROM {self._table} WHERE {self._key} = ?",  # noqa: S608
                (self._key_values.get(key, key),),
            ).fetchone()
        if row is None:
            raise ItemSkipped("row deleted during the job")
        return row[0]

    def read(self, key: str) -> StoredItem:
        """The row's value; a NULL or a non-TEXT/BLOB value is skipped (left alone)."""
        value = self._get(key)
        raw = _as_bytes(value)
        if raw is None:
            raise ItemSkipped(NULL_SKIPPED if value is None else NOT_TEXT_SKIPPED)
        return StoredItem(io.BytesIO(raw), hashlib.sha256(raw).hexdigest())

    def pop_written_version(self, key: str) -> str | None:
        """The version token of the value the last successful write of ``key`` stored."""
        with self._lock:
            return self._written.pop(key, None)

    def write(self, key: str, version: str, writer: Writer) -> bool:
        """Conditional UPDATE: False (nothing written) if the row changed since it was read."""
        try:
            old = self._get(key)
        except ItemSkipped:
            return False  # deleted meanwhile: changed by someone else
        old_bytes = _as_bytes(old)
        if old_bytes is None or hashlib.sha256(old_bytes).hexdigest() != version:
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
                (new, self._key_values.get(key, key), old),
            )
            if cur.rowcount != 1:
                return False
            stored = new if isinstance(new, bytes) else str(new).encode("utf-8")
            self._written[key] = hashlib.sha256(stored).hexdigest()
        return True
