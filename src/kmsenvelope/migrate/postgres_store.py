"""Envelopes in a PostgreSQL table column (compact text or binary bytea), updated in place.

Reached from the command line as
``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB?table=T&key=ID_COLUMN&column=ENVELOPE_COLUMN``
(:mod:`kmsenvelope.migrate.plugin`). psycopg 3 is imported only when such a store is opened
(the ``kmsenvelope[postgres]`` extra), never by the core otherwise. What the URL leaves out,
libpq finds as usual: ``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``, ``~/.pgpass``,
``PGSSLMODE``, ….

Table, schema and column names are identifiers only (letters, digits, ``_``), always quoted
(case-sensitive); keys and values are bound parameters, never SQL text. Keys travel as text
and are cast back by PostgreSQL to the key column's type, so any orderable key type works.
Listing is keyset-paginated (``WHERE key > last ORDER BY key LIMIT n``): millions of rows are
never held at once. A write is ``UPDATE … WHERE key = %s AND column = <the value read>``, so a
row changed by someone else meanwhile is never overwritten.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import (
    AccessDeniedError,
    ConfigError,
    KmsEnvelopeError,
    ProviderError,
    ProviderUnavailableError,
)
from .sqlite_store import NULL_SKIPPED
from .store import ItemSkipped, StoredItem, Writer

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from ..config import Config
    from .store_urls import StoreURL

    Connection = psycopg.Connection[tuple[Any, ...]]

__all__ = ["PAGE_SIZE", "PostgresStore", "open_postgres"]

PAGE_SIZE = 1000
"""Keys one listing query fetches (a page; the next starts after its last key)."""
MAX_CONNECTIONS = 32
"""Connections the store opens at most; more concurrent workers wait for one."""
DEFAULT_CONNECT_TIMEOUT = 10
"""Seconds to wait for a server, unless the URL's ``connect_timeout`` or PGCONNECT_TIMEOUT say."""
REQUIRED_PARAMS = ("table", "key", "column")
OPTIONAL_PARAMS = ("schema", "sslmode", "sslrootcert", "connect_timeout")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TEXT_TYPES = frozenset({"text", "character varying"})
ROW_DELETED = "row deleted during the job"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_ACCESS_MESSAGES = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "does not have connect privilege",
    'role "',  # role "x" does not exist (trust or peer authentication)
)
_UNREACHABLE_MESSAGES = (
    "connection refused",
    "timeout expired",
    "could not translate host name",
    "failed to resolve host",
    "no route to host",
    "network is unreachable",
    "server closed the connection",
    "the database system is",  # starting up, shutting down, in recovery
    "too many connections",
    "no such file or directory",  # no server on that socket
    "connection timed out",
)
_CONFLICT_STATES = {
    "40001": "serialization failure",
    "40P01": "deadlock detected",
    "55P03": "lock not available",
    "57014": "statement timeout",
}


def _ident(name: str, what: str) -> str:
    """``name``, if it is a plain identifier (else ``ConfigError``; never SQL text)."""
    if not _IDENT.fullmatch(name):
        raise ConfigError(
            f"invalid PostgreSQL {what} name {name!r} (letters, digits and '_', at most 63)"
        )
    return name


def _one_line(exc: BaseException) -> str:
    """A psycopg message's first meaningful line, without libpq's ``connection to server …
    failed:`` preamble and ``FATAL:`` tag."""
    text = str(exc).strip()
    text = re.sub(r"^connection failed:\s*", "", text)
    text = re.sub(r"^connection to server (at|on) .*? failed:\s*", "", text)
    line = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"^(FATAL|ERROR):\s*", "", line).strip().rstrip(".")


class _Held(io.BytesIO):
    """A value read, as a stream; closing it forgets what ``read`` kept for ``write``."""

    def __init__(self, raw: bytes, on_close: Callable[[], None]) -> None:
        super().__init__(raw)
        self._on_close: Callable[[], None] | None = on_close

    def close(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()
        super().close()


class _Pool:
    """Autocommit connections for the listing and the workers: one per thread using the store
    at a time (at most :data:`MAX_CONNECTIONS`), kept open for the next one."""

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A connection of the pool (a new one when none is idle) for the ``with`` block."""
        self._slots.acquire()
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                self._give_back(conn)
        finally:
            self._slots.release()

    def _give_back(self, conn: Connection) -> None:
        from psycopg.pq import TransactionStatus

        healthy = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
        )
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PostgresStore:
    """Rows of ``table``: ``key_column`` identifies a row (listed as text, in key order; rows
    with a NULL key are not listed), ``value_column`` (text, varchar or bytea) holds an envelope.

    The version of a row is the SHA-256 of its value; the write is a conditional UPDATE (no row
    updated: changed by others). Text stays text, bytea stays bytea. NULLs are skipped; values
    that are not envelopes are left alone by the job. Each value read is held in memory while
    its stream is open (a PostgreSQL value is at most 1 GiB).
    """

    def __init__(
        self,
        connect_args: dict[str, Any],
        table: str,
        *,
        key_column: str = "id",
        value_column: str = "envelope",
        schema: str | None = None,
        where: str = "postgresql",
    ) -> None:
        """``connect_args`` for ``psycopg.connect`` (the password among them is never shown);
        ``where`` names the database in messages."""
        self._table_name = _ident(table, "table")
        self._schema = None if schema is None else _ident(schema, "schema")
        self._key_name = _ident(key_column, "column")
        self._value_name = _ident(value_column, "column")
        self._where = where
        self._password = connect_args.get("password")
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                "the postgresql:// store needs psycopg: install kmsenvelope[postgres]"
            ) from None
        args = dict(connect_args)

        def connect() -> Connection:
            with self._errors("connecting"):
                return psycopg.connect(**args, autocommit=True)

        self._pool = _Pool(connect)
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, str | bytes]] = {}  # key -> (version, value) while open
        self._written: dict[str, str] = {}
        try:
            self._is_text = self._check_columns()
        except BaseException:
            self._pool.close()
            raise
        self._build_queries()

    def __repr__(self) -> str:
        return f"PostgresStore({self._where}, table={self._display_table()})"

    def _display_table(self) -> str:
        return f"{self._schema}.{self._table_name}" if self._schema else self._table_name

    def close(self) -> None:
        """Close every connection of the store."""
        self._pool.close()

    # -- setup -----------------------------------------------------------------------------------

    def _check_columns(self) -> bool:
        """Check the table and both columns exist (the value one text, varchar or bytea):
        ``ConfigError`` naming what is missing. True when the value column is text."""
        relation = '"' + self._table_name + '"'
        if self._schema:
            relation = '"' + self._schema + '".' + relation
        query = (
            "SELECT a.attname, pg_catalog.format_type("
            "   COALESCE(NULLIF(t.typbasetype, 0), a.atttypid), NULL) "
            "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 "
            "AND NOT a.attisdropped"
        )
        with self._pool.connection() as conn, self._errors("reading the table's columns"):
            columns = dict(conn.execute(query, (relation,)).fetchall())
        table = self._display_table()
        if not columns:
            hint = ""
            if table != table.lower():
                hint = " (names are case-sensitive: an unquoted CREATE TABLE makes lower case)"
            raise ConfigError(f"{self._where}: no table {table}{hint}")
        for name in (self._key_name, self._value_name):
            if name not in columns:
                found = ", ".join(sorted(columns))
                raise ConfigError(f"{self._where}: no column {table}.{name} (columns: {found})")
        kind = str(columns[self._value_name])
        if kind != "bytea" and kind not in TEXT_TYPES:
            raise ConfigError(
                f"{self._where}: {table}.{self._value_name} is {kind}: the envelope column must "
                "be text, varchar or bytea"
            )
        return kind != "bytea"

    def _build_queries(self) -> None:
        """The store's statements, identifiers quoted by psycopg."""
        from psycopg import sql

        names: dict[str, sql.Composable] = {
            "t": (
                sql.Identifier(self._schema, self._table_name)
                if self._schema
                else sql.Identifier(self._table_name)
            ),
            "k": sql.Identifier(self._key_name),
            "v": sql.Identifier(self._value_name),
        }
        # ORDER BY the column, qualified: a bare name would sort by the text output column.
        self._q_first = sql.SQL(
            "SELECT {t}.{k}::text FROM {t} WHERE {t}.{k} IS NOT NULL ORDER BY {t}.{k} LIMIT %s"
        ).format(**names)
        self._q_next = sql.SQL(
            "SELECT {t}.{k}::text FROM {t} WHERE {t}.{k} > %s ORDER BY {t}.{k} LIMIT %s"
        ).format(**names)
        self._q_read = sql.SQL("SELECT {v} FROM {t} WHERE {k} = %s LIMIT 2").format(**names)
        self._q_update = sql.SQL("UPDATE {t} SET {v} = %s WHERE {k} = %s AND {v} = %s").format(
            **names
        )

    # -- errors ----------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """psycopg's errors inside the block, as kmsenvelope's (one line, no password)."""
        import psycopg

        try:
            yield
        except psycopg.Error as exc:
            raise self._error(exc, what) from None

    def _error(self, exc: Exception, what: str) -> KmsEnvelopeError:
        """A psycopg failure as kmsenvelope's error: auth -> access denied, unreachable or
        busy -> unavailable, a missing table or column -> configuration."""
        from psycopg import OperationalError

        state = str(getattr(exc, "sqlstate", None) or "")
        detail = _one_line(exc)
        if self._password:
            detail = detail.replace(self._password, "***")
        lowered = detail.lower()
        where = self._where
        table = self._display_table()
        if not state and isinstance(exc, OperationalError):
            if "does not exist" in lowered and "database" in lowered:
                return ConfigError(f"{where}: {detail}")
            if any(m in lowered for m in _ACCESS_MESSAGES):
                return AccessDeniedError(f"{where}: cannot connect: {detail}")
            if any(m in lowered for m in _UNREACHABLE_MESSAGES):
                return ProviderUnavailableError(f"{where}: PostgreSQL unreachable: {detail}")
            return ProviderError(f"{where}: cannot connect: {detail}")
        if state in ("28P01", "28000", "42501"):
            return AccessDeniedError(f"{where}: access denied to {table} on {what}: {detail}")
        if state == "42P01":
            return ConfigError(f"{where}: no table {table} ({detail})")
        if state == "42703":
            return ConfigError(f"{where}: {table}: {detail}")
        if state == "3D000":
            return ConfigError(f"{where}: {detail}")
        if state in _CONFLICT_STATES:
            return ProviderUnavailableError(
                f"{where}: {_CONFLICT_STATES[state]} on {what} (row busy: try again): {detail}"
            )
        if state[:2] in ("08", "53", "57") or isinstance(exc, OperationalError):
            return ProviderUnavailableError(f"{where}: PostgreSQL unavailable on {what}: {detail}")
        if state.startswith("42"):
            return ConfigError(f"{where}: {table}: {what} failed: {detail}")
        return ProviderError(f"{where}: {what} failed: {detail} (SQLSTATE {state or '?'})")

    # -- the store protocol ----------------------------------------------------------------------

    def list(self) -> Iterator[str]:
        """Every row's key (as text), in key order, a page at a time (NULL keys left out; a
        key on several rows listed once)."""
        last: str | None = None
        while True:
            with self._pool.connection() as conn, self._errors("listing rows"):
                if last is None:
                    rows = conn.execute(self._q_first, (PAGE_SIZE,)).fetchall()
                else:
                    rows = conn.execute(self._q_next, (last, PAGE_SIZE)).fetchall()
            for (key,) in rows:
                if key != last:
                    yield str(key)
                last = key
            if len(rows) < PAGE_SIZE:
                return

    def _select(self, key: str) -> str | bytes | None:
        """The row's value (``ItemSkipped`` when no row has the key any more)."""
        with self._pool.connection() as conn, self._errors(f"reading {key!r}"):
            rows = conn.execute(self._q_read, (key,)).fetchall()
        if not rows:
            raise ItemSkipped(ROW_DELETED)
        if len(rows) > 1:
            raise ConfigError(
                f"{self._where}: {self._key_name} = {key!r} names several rows of "
                f"{self._display_table()}: the key column must be unique"
            )
        value = rows[0][0]
        if isinstance(value, memoryview):
            value = value.tobytes()
        if value is not None and not isinstance(value, str | bytes):
            raise ProviderError(f"{self._where}: {key!r}: unexpected {type(value).__name__}")
        return value

    def read(self, key: str) -> StoredItem:
        """The row's value as a stream; its version is the SHA-256 of the value. NULL: skipped."""
        value = self._select(key)
        if value is None:
            raise ItemSkipped(NULL_SKIPPED)
        raw = value.encode("utf-8") if isinstance(value, str) else value
        version = hashlib.sha256(raw).hexdigest()
        with self._lock:
            self._held[key] = (version, value)

        def forget() -> None:
            with self._lock:
                self._held.pop(key, None)

        return StoredItem(_Held(raw, forget), version)

    def pop_written_version(self, key: str) -> str | None:
        """The version token of the value the last successful write of ``key`` stored."""
        with self._lock:
            return self._written.pop(key, None)

    def write(self, key: str, version: str, writer: Writer) -> bool:
        """``UPDATE … WHERE key = %s AND column = <value read>``: False (nothing written) if
        the row changed, or went away, since it was read."""
        with self._lock:
            held = self._held.get(key)
        if held is not None and held[0] == version:
            old = held[1]
        else:  # not read through this store, or since changed: compare what is there now
            try:
                current = self._select(key)
            except ItemSkipped:
                return False
            if current is None:
                return False
            raw = current.encode("utf-8") if isinstance(current, str) else current
            if hashlib.sha256(raw).hexdigest() != version:
                return False
            old = current
        buf = io.BytesIO()
        writer(buf)
        data = buf.getvalue()
        new: str | bytes = data
        if isinstance(old, str):
            if not data.isascii():
                raise ProviderError(
                    f"{self._where}: {key!r}: a binary envelope cannot be stored in the text "
                    f"column {self._value_name}"
                )
            new = data.decode("ascii").strip()
        with self._pool.connection() as conn, self._errors(f"writing {key!r}"):
            updated = conn.execute(self._q_update, (new, key, old)).rowcount
        if updated < 1:
            return False
        stored = new.encode("utf-8") if isinstance(new, str) else new
        with self._lock:
            self._written[key] = hashlib.sha256(stored).hexdigest()
        return True


def open_postgres(url: StoreURL, config: Config) -> PostgresStore:
    """``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB?table=T&key=ID&column=ENV`` (also
    ``schema``, ``sslmode``, ``sslrootcert``, ``connect_timeout``); what the URL leaves out
    comes from libpq's environment (PGHOST, PGPASSWORD, ~/.pgpass, PGSSLMODE, …)."""
    url.check_params(required=REQUIRED_PARAMS, optional=OPTIONAL_PARAMS)
    params = url.params
    if "/" in url.path:
        raise url.error("the path is the database name only: write …/DB?table=…")
    args: dict[str, Any] = {"application_name": "kmsenvelope", "client_encoding": "UTF8"}
    host = url.host[1:-1] if url.host.startswith("[") else url.host
    for name, value in (
        ("host", host),
        ("port", url.port),
        ("user", url.username),
        ("password", url.password),
        ("dbname", url.path),
        ("sslrootcert", params.get("sslrootcert")),
    ):
        if value:
            args[name] = value
    sslmode = params.get("sslmode")
    if sslmode is not None:
        if sslmode not in SSL_MODES:
            raise url.error(f"sslmode must be one of {', '.join(SSL_MODES)}")
        args["sslmode"] = sslmode
    timeout = params.get("connect_timeout")
    if timeout is not None and not (timeout.isdigit() and 0 < int(timeout) <= 3600):
        raise url.error("connect_timeout must be a number of seconds, 1 to 3600")
    if timeout is not None:
        args["connect_timeout"] = int(timeout)
    elif not os.environ.get("PGCONNECT_TIMEOUT"):
        args["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    user = f"{url.username}@" if url.username else ""
    port = f":{url.port}" if url.port is not None else ""
    return PostgresStore(
        args,
        params["table"],
        key_column=params["key"],
        value_column=params["column"],
        schema=params.get("schema") or None,
        where=f"{url.scheme}://{user}{url.host}{port}/{url.path}",
    )
