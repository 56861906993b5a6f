"""A PostgreSQL server for store tests: a throwaway cluster (tests/services/postgres.py) started
once per session, spoken to by the store through libpq with password authentication; and
helpers to make, fill and read a table."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from services.postgres import PostgresCluster, PostgresNotFound  # tests/ is on sys.path

__all__ = ["connect", "fill", "new_table", "pg_env", "postgres", "rows"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the session's own (skipped without the server binaries, unless
    CI is set: CI never skips it silently)."""
    try:
        cluster = PostgresCluster().__enter__()
    except PostgresNotFound as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL store tests: {exc}")
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.__exit__(None, None, None)


@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """None of the developer's libpq settings (PGHOST, PGPASSWORD, …); the local, aws-kms and
    stores plugins; journals under ``tmp_path``."""
    for name in list(os.environ):
        if name.startswith("PG"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local,aws-kms,stores")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def connect(pg: PostgresCluster) -> psycopg.Connection[tuple[Any, ...]]:
    """The test's own connection (autocommit), not the store's."""
    return psycopg.connect(**pg.connect_args(), autocommit=True)


def new_table(pg: PostgresCluster, value_type: str, *, key_type: str = "bigint") -> str:
    """A new table ``(id KEY_TYPE PRIMARY KEY, env VALUE_TYPE)`` with a fresh name."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with connect(pg) as conn:
        conn.execute(f"CREATE TABLE {name} (id {key_type} PRIMARY KEY, env {value_type})")
    return name


def fill(pg: PostgresCluster, table: str, values: Mapping[Any, str | bytes | None]) -> None:
    """Insert ``values`` (key -> value) into ``table``."""
    with connect(pg) as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (id, env) VALUES (%s, %s)", list(values.items()))


def rows(pg: PostgresCluster, table: str) -> dict[Any, str | bytes | None]:
    """Every row of ``table``: key -> value (bytea as bytes, text as str)."""
    with connect(pg) as conn:
        return dict(conn.execute(f"SELECT id, env FROM {table}").fetchall())
