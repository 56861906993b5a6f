"""``SqliteStore.list`` is lazy and paged (keyset pagination): a table of many rows is never
held in memory at once, a row added after the listing started is still listed, and every key --
INTEGER, REAL, TEXT or BLOB, in SQLite's order -- is listed once and reads back its row."""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path

from kmsenvelope.migrate import SqliteStore

ROWS = 200_000


def test_listing_a_large_table_holds_only_a_page(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, env TEXT)")
        con.executemany("INSERT INTO t VALUES (?, 'x')", ((i,) for i in range(ROWS)))
    store = SqliteStore(db, "t", key_column="id", value_column="env")
    try:
        tracemalloc.start()
        count = 0
        last = ""
        for key in store.list():
            count += 1
            last = key
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert (count, last) == (ROWS, str(ROWS - 1))
        # All keys at once (the rows fetched, 200,000 strings) take well over 10 MB; nor does
        # the store keep the integer keys (their text finds the row).
        assert peak < 2_000_000, peak
        with store.read(str(ROWS - 1)).stream as stream:
            assert stream.read() == b"x"
    finally:
        store.close()


def test_a_row_added_after_the_listing_started_is_listed(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, env TEXT)")
        con.executemany("INSERT INTO t VALUES (?, 'x')", ((i,) for i in range(2500)))
    store = SqliteStore(db, "t", key_column="id", value_column="env")
    try:
        listing = iter(store.list())
        first = [next(listing) for _ in range(5)]
        with sqlite3.connect(db) as con:
            con.execute("INSERT INTO t VALUES (100000, 'late')")
        assert first + list(listing) == [str(i) for i in [*range(2500), 100000]]
        with store.read("100000").stream as stream:
            assert stream.read() == b"late"
    finally:
        store.close()


def test_every_kind_of_key_is_listed_once_in_order_and_reads_its_row(tmp_path: Path) -> None:
    db = tmp_path / "mixed.db"
    keys: list[object] = [*range(1500), 2.5, -7, "a", "b'quote", "z" * 3, b"\x00blob", b"\xff"]
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (k, env)")  # no type: no conversion, any key
        con.executemany("INSERT INTO t VALUES (?, ?)", ((k, f"v{k!r}") for k in keys))
        con.execute("INSERT INTO t VALUES (NULL, 'no key')")
        con.execute("INSERT INTO t VALUES ('a', 'the same key again')")
        expected = [
            row[0] for row in con.execute("SELECT DISTINCT k FROM t WHERE k IS NOT NULL ORDER BY k")
        ]
    store = SqliteStore(db, "t", key_column="k", value_column="env")
    try:
        listed = list(store.list())
        assert listed == [k if isinstance(k, str) else str(k) for k in expected]
        for key, native in zip(listed, expected, strict=True):
            with store.read(key).stream as stream:
                value = stream.read().decode()
            assert value == ("v'a'" if native == "a" else f"v{native!r}"), key
    finally:
        store.close()
