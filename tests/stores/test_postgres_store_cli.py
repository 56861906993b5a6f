"""``kmsenvelope migrate postgresql://…`` as a user runs it, against a throwaway PostgreSQL cluster
(password authentication) and moto's KMS: 1,000 envelopes in a text and in a bytea column to
AWS KMS and back, a multi-chunk bytea payload untouched, NULLs and non-envelopes left alone, a
concurrent writer never overwritten, SIGKILL then ``--resume``, dry run, ``rewrap``, and the
errors a user meets (wrong password, missing table, hostile names, no server)."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from postgres_support import connect, fill, new_table, pg_env, postgres, rows
from s3_support import aws_env, cli, kms_key_arn, moto_url
from services.postgres import PostgresCluster

import kmsenvelope
from kmsenvelope import ConfigError, ProviderRegistry, load_config
from kmsenvelope.local import Keystore
from kmsenvelope.migrate.store_urls import open_store

__all__ = ["aws_env", "moto_url", "pg_env", "postgres"]  # fixtures, imported for pytest


@pytest.fixture
def keys(keystore: Keystore, pg_env: None) -> Keystore:
    keystore.create_key("old")
    keystore.create_key("new")
    return keystore


def url(pg: PostgresCluster, table: str, **extra: str) -> str:
    return pg.url({"table": table, "key": "id", "column": "env", **extra})


def ids_in(value: object) -> list[str]:
    assert isinstance(value, str | bytes), value
    data = value.encode() if isinstance(value, str) else value
    return [r.key_id for r in kmsenvelope.inspect_envelope(data).recipients]


def envelopes(count: int, *, compact: bool) -> tuple[dict[int, str | bytes], dict[int, bytes]]:
    """``count`` envelopes for ``local:old`` (context ``n``), and their plaintexts."""
    values: dict[int, str | bytes] = {}
    plain = {}
    for i in range(count):
        plain[i] = f"secret number {i}".encode()
        data = kmsenvelope.encrypt(plain[i], ["local:old"], {"n": str(i)}, armor=compact)
        values[i] = data.decode() if compact else data
    return values, plain


@pytest.mark.parametrize("column", ["text", "bytea"])
def test_thousand_envelopes_to_aws_kms_and_back(
    keys: Keystore, postgres: PostgresCluster, aws_env: dict[str, str], moto_url: str, column: str
) -> None:
    table = new_table(postgres, column)
    values, plain = envelopes(1000, compact=column == "text")
    others: dict[int, str | bytes | None] = {2000: None}  # left alone, as they are
    if column == "text":
        others |= {2001: "not an envelope", 2002: "", 2003: " \n "}
    else:
        others |= {2001: b"\x00\x01 not an envelope", 2002: b"", 2003: b"\x89PNG\r\n"}
        compact = kmsenvelope.encrypt(b"compact in bytea", ["local:old"], {"n": "1500"}, armor=True)
        values[1500], plain[1500] = compact, b"compact in bytea"  # stays compact, stays bytea
    fill(postgres, table, {**values, **others})
    arn = kms_key_arn(moto_url)

    there = cli("migrate", url(postgres, table), "--to", f"aws-kms:{arn}",
                "--remove", "local:old", "--concurrency", "16")  # fmt: skip
    assert there.returncode == 0, there.stderr
    assert f"{len(values) + 4} items: {len(values)} migrated" in there.stderr
    assert "4 skipped (" in there.stderr
    after = rows(postgres, table)
    for i in values:
        assert ids_in(after[i]) == [f"aws-kms:{arn}"], i
        assert type(after[i]) is type(values[i])  # text stays text, bytea stays bytea
    if column == "text":
        assert all(str(after[i]).startswith("kmsenv1.") for i in values)  # compact stays so
    else:
        binary = {i: after[i] for i in values}
        assert all(isinstance(v, bytes) for v in binary.values())
        assert [
            i for i, v in binary.items() if isinstance(v, bytes) and v.startswith(b"kmsenv1.")
        ] == [1500]
    assert {i: after[i] for i in others} == others
    assert postgres.password not in there.stderr + there.stdout

    back = cli("migrate", url(postgres, table), "--to", "local:old", "--remove-provider",
               "aws-kms", "--allow", f"aws-kms:{arn}", "--concurrency", "16", "-q")  # fmt: skip
    assert back.returncode == 0, back.stderr
    returned = rows(postgres, table)
    for i, data in plain.items():
        value = returned[i]
        assert ids_in(value) == ["local:old/1"], i
        assert type(value) is type(values[i])
        assert isinstance(value, str | bytes)
        assert kmsenvelope.decrypt(value, {"n": str(i)}) == data
    assert {i: returned[i] for i in others} == others


def payload(data: bytes) -> bytes:
    """The bytes after a binary envelope's header: the encrypted chunks."""
    return data[kmsenvelope.inspect_envelope(data).header_size :]


def test_multi_chunk_bytea_payload_bytes_unchanged(
    keys: Keystore, postgres: PostgresCluster
) -> None:
    table = new_table(postgres, "bytea", key_type="text")
    big = os.urandom(5 * 1024 * 1024 + 123)
    data = kmsenvelope.encrypt(big, ["local:old"], {"file": "big"})
    assert kmsenvelope.inspect_envelope(data).chunk_size * 2 < len(big)  # several chunks
    small = kmsenvelope.encrypt(b"small", ["local:old"], {"file": "small"})
    fill(postgres, table, {"big": data, "small": small})
    proc = cli("migrate", url(postgres, table), "--to", "local:new", "--remove", "local:old")
    assert proc.returncode == 0, proc.stderr
    assert "2 items: 2 migrated" in proc.stderr
    after = rows(postgres, table)
    assert isinstance(after["big"], bytes)
    assert ids_in(after["big"]) == ["local:new/1"]
    assert payload(after["big"]) == payload(data)
    assert kmsenvelope.decrypt(after["big"], {"file": "big"}) == big


class _Writer(threading.Thread):
    """Another application: re-writes one row over and over, each time a different value (the
    same compact envelope behind more leading blanks, which the format allows), until stopped."""

    def __init__(self, pg: PostgresCluster, table: str, key: int, value: str) -> None:
        super().__init__(daemon=True)
        self.pg, self.table, self.key, self.value = pg, table, key, value
        self.stop = threading.Event()
        self.writes = 0
        self.last = value

    def run(self) -> None:
        with connect(self.pg) as conn:
            while not self.stop.is_set():
                self.writes += 1
                value = " " * (self.writes % 5000) + self.value
                conn.execute(f"UPDATE {self.table} SET env = %s WHERE id = %s", (value, self.key))
                self.last = value
                time.sleep(0.001)


def test_a_concurrent_change_is_not_overwritten(
    keys: Keystore, postgres: PostgresCluster, tmp_path: Path
) -> None:
    table = new_table(postgres, "text")
    values, _plain = envelopes(30, compact=True)
    fill(postgres, table, values)
    writer = _Writer(postgres, table, 9, str(values[9]))
    writer.start()
    report = tmp_path / "report.json"
    try:
        # The rate limit holds every envelope between its read and its conditional write for
        # tens of milliseconds, while the other application re-writes the row meanwhile.
        proc = cli("migrate", url(postgres, table), "--to", "local:new", "--remove", "local:old",
                   "--rate-limit", "local=60", "--concurrency", "2",
                   "--report", str(report))  # fmt: skip
    finally:
        writer.stop.set()
        writer.join()
    assert writer.writes > 20
    assert proc.returncode == 13, proc.stderr
    assert "1 changed by others" in proc.stderr
    assert "changed during the job, not overwritten: 9" in proc.stderr
    assert [c["key"] for c in json.loads(report.read_text())["conflicts"]] == ["9"]
    final = rows(postgres, table)
    assert final[9] == writer.last  # the other application's last write stands
    assert ids_in(final[9]) == ["local:old/1"]
    assert all(ids_in(v) == ["local:new/1"] for k, v in final.items() if k != 9)


def done_in(journal: Path) -> collections.Counter[str]:
    done: collections.Counter[str] = collections.Counter()
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if entry.get("status") == "done":
                done[entry["key"]] += 1
    return done


def test_sigkill_then_resume_loses_nothing(
    keys: Keystore, postgres: PostgresCluster, tmp_path: Path
) -> None:
    table = new_table(postgres, "bytea")
    values, plain = envelopes(200, compact=False)
    fill(postgres, table, values)
    journal = tmp_path / "job.journal"
    cmd = [sys.executable, "-m", "kmsenvelope", "migrate", url(postgres, table),
           "--to", "local:new", "--remove", "local:old", "--concurrency", "4",
           "--rate-limit", "local=150",  # 200 envelopes x 3 calls: about 4 s, killed mid-job
           "--resume", "--journal", str(journal)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(done_in(journal).values()) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    on_new = sum(ids_in(v) == ["local:new/1"] for v in rows(postgres, table).values())
    assert 20 <= on_new < len(values)  # killed mid-job

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    for i, value in rows(postgres, table).items():
        assert ids_in(value) == ["local:new/1"], i
        assert isinstance(value, bytes)
        assert kmsenvelope.decrypt(value, {"n": str(i)}) == plain[i]
    assert max(done_in(journal).values()) == 1  # never migrated twice
    assert "200 items" in final.stderr
    assert "0 failed, 0 changed by others" in final.stderr


def test_dry_run_changes_nothing(keys: Keystore, postgres: PostgresCluster, tmp_path: Path) -> None:
    table = new_table(postgres, "text")
    values, _plain = envelopes(20, compact=True)
    fill(postgres, table, {**values, 99: None})
    proc = cli("migrate", url(postgres, table), "--to", "local:new", "--remove", "local:old",
               "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dry run: 21 items: 20 would be migrated" in proc.stderr
    assert rows(postgres, table) == {**values, 99: None}
    assert not list((tmp_path / "state").rglob("*.journal"))


def test_rewrap_accepts_a_postgresql_url(keys: Keystore, postgres: PostgresCluster) -> None:
    table = new_table(postgres, "varchar(4000)")
    values, plain = envelopes(5, compact=True)
    fill(postgres, table, {**values, 5: None, 6: "plain text"})
    target = postgres.url(
        {"table": table, "key": "id", "column": "env"}, scheme="postgres"
    )  # the alias
    proc = cli("rewrap", target, "--add", "local:new")
    assert proc.returncode == 0, proc.stderr
    after = rows(postgres, table)
    for i, data in plain.items():
        assert ids_in(after[i]) == ["local:old/1", "local:new/1"]
        assert kmsenvelope.decrypt(str(after[i]), {"n": str(i)}) == data
    assert (after[5], after[6]) == (None, "plain text")


def one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kmsenvelope: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_password_from_url_pgpassword_or_pgpass_and_a_wrong_one(
    keys: Keystore, postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = new_table(postgres, "text")
    values, _plain = envelopes(3, compact=True)
    fill(postgres, table, values)
    wrong = "Wr0ng:p@ss%word"
    where = f"{postgres.host}:{postgres.port}/{postgres.database}?table={table}&key=id&column=env"
    bad = f"postgresql://{postgres.user}:{quote(wrong, safe='')}@{where}"
    line = one_error_line(cli("migrate", bad, "--to", "local:new"), 8)
    assert line == (
        f"kmsenvelope: error: postgresql://{postgres.user}@{postgres.host}:{postgres.port}/"
        f"{postgres.database}: cannot connect: password authentication failed for user "
        f'"{postgres.user}"'
    )

    nopass = f"postgresql://{postgres.user}@{where}"
    line = one_error_line(cli("migrate", nopass, "--to", "local:new", "--dry-run"), 8)
    assert "no password supplied" in line

    monkeypatch.setenv("PGPASSWORD", postgres.password)  # libpq's own environment
    proc = cli("migrate", nopass, "--to", "local:new", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "3 would be migrated" in proc.stderr
    monkeypatch.delenv("PGPASSWORD")
    pgpass = Path.home() / ".pgpass"  # the test's private HOME
    escaped = postgres.password.replace("\\", "\\\\").replace(":", "\\:")
    pgpass.write_text(f"{postgres.host}:{postgres.port}:*:{postgres.user}:{escaped}\n")
    pgpass.chmod(0o600)
    proc = cli("migrate", nopass, "--to", "local:new", "--dry-run")
    assert proc.returncode == 0, proc.stderr


def test_missing_table_column_or_database_is_a_config_error(
    keys: Keystore, postgres: PostgresCluster
) -> None:
    table = new_table(postgres, "text")
    line = one_error_line(cli("migrate", url(postgres, "no_such_table"), "--to", "local:new"), 2)
    assert line.endswith(
        f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{postgres.database}: "
        "no table no_such_table"
    )
    line = one_error_line(cli("migrate", url(postgres, table.upper()), "--to", "local:new"), 2)
    assert "names are case-sensitive" in line
    missing = postgres.url({"table": table, "key": "id", "column": "token"})
    line = one_error_line(cli("migrate", missing, "--to", "local:new"), 2)
    assert line.endswith(f"no column {table}.token (columns: env, id)")
    wrong_type = postgres.url({"table": table, "key": "env", "column": "id"})
    line = one_error_line(cli("migrate", wrong_type, "--to", "local:new"), 2)
    assert f"{table}.id is bigint: the envelope column must be text, varchar or bytea" in line
    schema = url(postgres, table, schema="elsewhere")
    assert "no table elsewhere." in one_error_line(cli("migrate", schema, "--to", "local:new"), 2)
    other_db = url(postgres, table).replace(f"/{postgres.database}?", "/no_such_db?")
    line = one_error_line(cli("migrate", other_db, "--to", "local:new"), 2)
    assert 'database "no_such_db" does not exist' in line
    unknown = url(postgres, table, where="1=1")
    line = one_error_line(cli("migrate", unknown, "--to", "local:new"), 2)
    assert "unknown parameter 'where'" in line
    assert postgres.password not in line


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("table", "x;drop table victim"),
        ("table", 'x" OR 1=1 --'),
        ("key", "id = id; --"),
        ("column", "env)"),
        ("schema", "public;drop table victim"),
    ],
)
def test_hostile_names_are_refused(
    keys: Keystore, postgres: PostgresCluster, part: str, value: str
) -> None:
    table = new_table(postgres, "text")
    with connect(postgres) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS victim (x int)")
    names = {"table": table, "key": "id", "column": "env", part: value}
    line = one_error_line(cli("migrate", postgres.url(names), "--to", "local:new"), 2)
    kind = {"key": "column", "column": "column"}.get(part, part)
    assert f"invalid PostgreSQL {kind} name" in line
    with connect(postgres) as conn:
        assert conn.execute("SELECT count(*) FROM victim").fetchone() == (0,)


def test_no_server_is_unavailable(keys: Keystore) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens once closed
    target = f"postgresql://app:s3cret@127.0.0.1:{closed}/app?table=t&key=id&column=env"
    line = one_error_line(cli("migrate", target, "--to", "local:new"), 7)
    assert line == (
        f"kmsenvelope: error: postgresql://app@127.0.0.1:{closed}/app: PostgreSQL unreachable: "
        "Connection refused"
    )


def _open(target: str) -> Any:
    return open_store(target, ProviderRegistry.load(), load_config())


def test_listing_is_paged_lazy_and_in_key_order(keys: Keystore, postgres: PostgresCluster) -> None:
    table = f"t_list_{os.getpid()}"
    with connect(postgres) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int, env text)")  # no key constraint
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, 'x')", [(i,) for i in range(2500)])
        conn.execute(f"INSERT INTO {table} VALUES (NULL, 'x'), (7, 'again')")
    store = _open(url(postgres, table))
    try:
        listing = iter(store.list())
        first = [next(listing) for _ in range(10)]
        with connect(postgres) as conn:  # appears after the listing started: still listed
            conn.execute(f"INSERT INTO {table} VALUES (100000, 'late')")
        keys_listed = first + list(listing)
        # Integer order across pages (not text order), each key once, NULL keys left out.
        assert keys_listed == [str(i) for i in [*range(2500), 100000]]
        with pytest.raises(ConfigError, match="the key column must be unique"):
            store.read("7")
        with store.read("100000").stream as stream:
            assert stream.read() == b"late"
    finally:
        store.close()


def test_text_keys_with_quotes_and_unicode(keys: Keystore, postgres: PostgresCluster) -> None:
    table = new_table(postgres, "text", key_type="text")
    values, plain = envelopes(4, compact=True)
    names = ["it's", 'say "hi"', "a b; drop", "ünïcode"]
    fill(postgres, table, {names[i]: v for i, v in values.items()})
    proc = cli("migrate", url(postgres, table), "--to", "local:new", "--remove", "local:old")
    assert proc.returncode == 0, proc.stderr
    after = rows(postgres, table)
    for i, name in enumerate(names):
        assert ids_in(after[name]) == ["local:new/1"]
        assert kmsenvelope.decrypt(str(after[name]), {"n": str(i)}) == plain[i]


def test_without_psycopg_the_store_says_which_extra(
    keys: Keystore, postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"install kmsenvelope\[postgres\]"):
        _open(url(postgres, "t"))
    assert psycopg  # the test module's own import is untouched


def test_a_role_without_privileges_is_access_denied(
    keys: Keystore, postgres: PostgresCluster
) -> None:
    table = new_table(postgres, "text")
    fill(postgres, table, envelopes(2, compact=True)[0])
    with connect(postgres) as conn:
        conn.execute("DROP ROLE IF EXISTS reader")
        conn.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'")
    target = (
        f"postgresql://reader:reader-pw@{postgres.host}:{postgres.port}/{postgres.database}"
        f"?table={table}&key=id&column=env"
    )
    line = one_error_line(cli("migrate", target, "--to", "local:new"), 8)
    assert line == (
        f"kmsenvelope: error: postgresql://reader@{postgres.host}:{postgres.port}/"
        f"{postgres.database}: access denied to {table} on listing rows: "
        f"permission denied for table {table}"
    )
