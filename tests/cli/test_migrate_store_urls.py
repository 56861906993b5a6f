"""``kmsenvelope migrate`` and ``rewrap`` on a store URL (``sqlite:///DB?table=…``), as a user
runs them: the round trip, dry run, report, a concurrent writer, injection attempts, unknown
schemes, and SIGKILL then ``--resume``."""

from __future__ import annotations

import collections
import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kmsenvelope
from kmsenvelope.local import Keystore

COUNT = 200


def run(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m kmsenvelope ARGS`` in ``cwd`` (the test's environment: local + stores)."""
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ids_in(value: object) -> list[str]:
    """The recipient key ids of the envelope ``value`` (a row's TEXT or BLOB)."""
    assert isinstance(value, str | bytes), value
    data = value.encode() if isinstance(value, str) else value
    return [r.key_id for r in kmsenvelope.inspect_envelope(data).recipients]


@pytest.fixture(autouse=True)
def stores_plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The built-in stores plugin next to the local provider; journals under ``tmp_path``."""
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local,stores")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def keys(keystore: Keystore) -> Keystore:
    keystore.create_key("old")
    keystore.create_key("new")
    return keystore


def make_table(db: Path, count: int) -> dict[int, bytes]:
    """``secrets(id, note, token)``: ``count`` envelopes for ``local:old`` -- even ids compact
    TEXT, odd ids binary BLOB -- then a NULL, a plain string and a number (not envelopes)."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, note TEXT, token)")
    plain: dict[int, bytes] = {}
    for i in range(count):
        data = f"secret number {i}".encode()
        env = kmsenvelope.encrypt(data, ["local:old"], {"row": str(i)}, armor=i % 2 == 0)
        value: str | bytes = env.decode().strip() if i % 2 == 0 else env
        con.execute("INSERT INTO secrets VALUES (?, ?, ?)", (i, f"note {i}", value))
        plain[i] = data
    con.executemany(
        "INSERT INTO secrets VALUES (?, ?, ?)",
        [(count, "null", None), (count + 1, "text", "hello"), (count + 2, "number", 42)],
    )
    con.commit()
    con.close()
    return plain


def url(db: Path, table: str = "secrets", key: str = "id", column: str = "token") -> str:
    return f"sqlite:///{db}?table={table}&key={key}&column={column}"


def rows(db: Path) -> dict[int, tuple[str, object]]:
    """Each row's ``typeof(token)`` and value."""
    con = sqlite3.connect(db)
    try:
        return {
            i: (kind, value)
            for i, kind, value in con.execute("SELECT id, typeof(token), token FROM secrets")
        }
    finally:
        con.close()


def digest(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


def test_round_trip_to_another_key_and_back(keys: Keystore, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    plain = make_table(db, COUNT)
    before = rows(db)
    report = tmp_path / "report.json"

    proc = run(
        "migrate",
        url(db),
        "--to",
        "local:new",
        "--remove",
        "local:old",
        "--report",
        str(report),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{COUNT + 3} items: {COUNT} migrated" in proc.stderr
    assert "3 skipped (" in proc.stderr  # the reasons in the order the items finished
    for reason in ("1 NULLs", "1 not envelopes", "1 not TEXT or BLOB"):
        assert reason in proc.stderr.split("3 skipped (", 1)[1].split(")", 1)[0]
    doc = json.loads(report.read_text())
    assert doc["summary"]["migrated"] == COUNT
    skipped = {s["key"]: s["reason"] for s in doc["skipped"]}
    assert skipped == {
        str(COUNT): "NULL",
        str(COUNT + 1): "not an envelope",
        str(COUNT + 2): "not TEXT or BLOB",
    }
    after = rows(db)
    for i, data in plain.items():
        kind, value = after[i]
        assert kind == ("text" if i % 2 == 0 else "blob"), i  # TEXT stays TEXT, BLOB BLOB
        assert isinstance(value, str | bytes)
        assert ids_in(value) == ["local:new/1"]
        assert kmsenvelope.decrypt(value, {"row": str(i)}) == data
    for i in (COUNT, COUNT + 1, COUNT + 2):
        assert after[i] == before[i]  # NULLs and non-envelopes left alone

    back = run("migrate", url(db), "--to", "local:old", "--remove", "local:new", "-q", cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    for i, data in plain.items():
        value = rows(db)[i][1]
        assert isinstance(value, str | bytes)
        assert ids_in(value) == ["local:old/1"]
        assert kmsenvelope.decrypt(value, {"row": str(i)}) == data


def test_dry_run_changes_nothing(keys: Keystore, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_table(db, 20)
    before = digest(db)
    proc = run(
        "migrate", url(db), "--to", "local:new", "--remove", "local:old", "--dry-run", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "dry run: 23 items: 20 would be migrated" in proc.stderr
    assert "would add local:new; remove local:old/1: 0" in proc.stderr
    assert digest(db) == before
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").rglob("*.journal"))


def test_rewrap_accepts_a_store_url(keys: Keystore, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    plain = make_table(db, 6)
    proc = run("rewrap", url(db), "--add", "local:new", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # NULL and non-envelope rows: skipped, not failed
    assert "rewrapped 0" in proc.stderr
    for i, data in plain.items():
        value = rows(db)[i][1]
        assert isinstance(value, str | bytes)
        assert sorted(ids_in(value)) == ["local:new/1", "local:old/1"]
        assert kmsenvelope.decrypt(value, {"row": str(i)}) == data


class _Writer(threading.Thread):
    """Another application: rewrites one row over and over, each time a different value (the
    same envelope behind more leading blanks, which the format allows), until stopped."""

    def __init__(self, db: Path, row: int, token: str) -> None:
        super().__init__(daemon=True)
        self.db, self.row, self.token = db, row, token
        self.stop = threading.Event()
        self.writes = 0
        self.last = token

    def run(self) -> None:
        con = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        con.execute("PRAGMA synchronous=OFF")
        while not self.stop.is_set():
            self.writes += 1
            self.last = " " * (self.writes % 5000) + self.token
            con.execute("UPDATE secrets SET token = ? WHERE id = ?", (self.last, self.row))
            time.sleep(0.001)
        con.close()


def test_a_concurrent_change_is_not_overwritten(keys: Keystore, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_table(db, 30)
    contested = 10
    token = rows(db)[contested][1]
    assert isinstance(token, str)
    writer = _Writer(db, contested, token)
    writer.start()
    report = tmp_path / "report.json"
    try:
        # The rate limit holds every envelope between its read and its conditional write for
        # tens of milliseconds, while the other application writes the row every millisecond.
        proc = run(
            "migrate",
            url(db),
            "--to",
            "local:new",
            "--remove",
            "local:old",
            "--rate-limit",
            "local=60",
            "--concurrency",
            "2",
            "--report",
            str(report),
            cwd=tmp_path,
        )
    finally:
        writer.stop.set()
        writer.join()
    assert writer.writes > 100
    assert proc.returncode == 13, proc.stderr
    assert "1 changed by others" in proc.stderr
    assert f"changed during the job, not overwritten: {contested}" in proc.stderr
    doc = json.loads(report.read_text())
    assert [c["key"] for c in doc["conflicts"]] == [str(contested)]
    final = rows(db)
    assert final[contested][1] == writer.last  # the other application's last write stands
    assert ids_in(writer.last) == ["local:old/1"]
    assert all(ids_in(v) == ["local:new/1"] for i, (_k, v) in final.items() if i < 30 and i != 10)


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("table", "secrets%3B%20DROP%20TABLE%20secrets"),
        ("table", 'secrets"%20--'),
        ("column", "token%3D1%20WHERE%201%3D1%3B--"),
        ("key", "id%20OR%201%3D1"),
        ("table", "secrets%0A"),
    ],
)
def test_injection_in_names_is_refused(
    keys: Keystore, tmp_path: Path, part: str, value: str
) -> None:
    db = tmp_path / "app.db"
    make_table(db, 3)
    before = digest(db)
    names = {"table": "secrets", "key": "id", "column": "token", part: value}
    proc = run("migrate", url(db, **names), "--to", "local:new", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"invalid SQLite {'table' if part == 'table' else 'column'} name" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest(db) == before


def test_bad_store_urls_are_one_line_errors(keys: Keystore, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_table(db, 2)
    cases = {
        f"{url(db)}&where=1": "unknown parameter 'where' (accepted: column, key, table)",
        f"sqlite:///{db}?table=secrets&key=id": "the parameter 'column' is required",
        f"{url(db)}&table=other": "the parameter 'table' is given twice",
        url(tmp_path / "missing.db"): "cannot open the SQLite database",
        "gcs://bucket/prefix": "no store is installed for URL scheme 'gcs' (installed: ",
        "az://container": "install kmsenvelope[azure-blob]",
        "postgresql://app@db:5432/app?table=t&key=id": "the parameter 'column' is required",
    }
    for target, message in cases.items():
        proc = run("migrate", target, "--to", "local:new", cwd=tmp_path)
        assert proc.returncode == 2, (target, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("kmsenvelope: error: "), proc.stderr
        assert message in lines[0], (target, lines[0])
    assert not (tmp_path / "missing.db").exists()  # a mistyped path never creates a database
    mixed = run("migrate", url(db), str(tmp_path), "--to", "local:new", cwd=tmp_path)
    assert mixed.returncode == 2
    assert "must be the only PATH" in mixed.stderr


def test_sqlite_url_needs_the_stores_plugin(
    keys: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "app.db"
    make_table(db, 2)
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local")
    proc = run("migrate", url(db), "--to", "local:new", cwd=tmp_path)
    assert proc.returncode == 2
    assert "(installed: none); it is built in: allow the 'stores' plugin" in proc.stderr


def on_new_key(db: Path, plain: dict[int, bytes]) -> int:
    """How many of the envelope rows have exactly ``local:new/1`` now."""
    now = rows(db)
    return sum(1 for i in plain if ids_in(now[i][1]) == ["local:new/1"])


def test_sigkill_then_resume_loses_nothing(keys: Keystore, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    plain = make_table(db, COUNT)
    journal = tmp_path / "job.journal"
    cmd = [
        sys.executable,
        "-m",
        "kmsenvelope",
        "migrate",
        url(db),
        "--to",
        "local:new",
        "--remove",
        "local:old",
        "--concurrency",
        "2",
        "--rate-limit",
        "local=150",  # 200 envelopes x 3 calls: about four seconds, so the kill lands mid-job
        "--resume",
        "--journal",
        str(journal),
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until some rows are migrated
        if on_new_key(db, plain) >= 20:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 20 <= on_new_key(db, plain) < COUNT  # killed mid-job

    final = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    after = rows(db)
    for i, data in plain.items():
        value = after[i][1]
        assert isinstance(value, str | bytes)
        assert ids_in(value) == ["local:new/1"], i
        assert kmsenvelope.decrypt(value, {"row": str(i)}) == data
    done: collections.Counter[str] = collections.Counter()
    for line in journal.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("status") == "done":
            done[entry["key"]] += 1
    assert max(done.values()) == 1  # never migrated twice
    assert f"{COUNT + 3} items" in final.stderr
    assert "0 failed, 0 changed by others" in final.stderr
