"""Stores are plugins: ``kmsenvelope_register_stores(register)``, ``register(url_scheme,
factory)``; ``kmsenvelope.migrate(URL, …)`` and the CLI open a URL through the store a plugin
registered for its scheme, the built-in SQLite store included."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import kmsenvelope
from kmsenvelope import Config, ConfigError, Engine, ProviderRegistry, hookimpl
from kmsenvelope.errors import PluginError
from kmsenvelope.local import Keystore
from kmsenvelope.migrate import (
    CallPolicy,
    GuardedEngine,
    RewrapPlan,
    StoredItem,
    StoreURL,
    parse_store_url,
)
from kmsenvelope.migrate.store import Writer

PLAN = RewrapPlan.of(add=["local:new"], remove=["local:old"])


class MemoryStore:
    """A third party's store: envelopes in a dict, versions are content digests."""

    def __init__(self, items: dict[str, bytes]) -> None:
        self.items = items
        self.lock = threading.Lock()

    def list(self) -> Iterable[str]:
        return sorted(self.items)

    def read(self, key: str) -> StoredItem:
        data = self.items[key]
        return StoredItem(io.BytesIO(data), hashlib.sha256(data).hexdigest())

    def write(self, key: str, version: str, writer: Writer) -> bool:
        buf = io.BytesIO()
        writer(buf)
        with self.lock:
            if hashlib.sha256(self.items[key]).hexdigest() != version:
                return False
            self.items[key] = buf.getvalue()
        return True


class MemoryStorePlugin:
    """Registers ``mem://BUCKET[/PREFIX]`` through the hook, remembering what each factory got."""

    def __init__(self, buckets: dict[str, dict[str, bytes]]) -> None:
        self.buckets = buckets
        self.opened: list[tuple[StoreURL, Config]] = []

    def open(self, url: StoreURL, config: Config) -> MemoryStore:
        self.opened.append((url, config))
        url.check_params(optional=("region",))
        if url.host not in self.buckets:
            raise url.error(f"no bucket {url.host!r}")
        return MemoryStore(self.buckets[url.host])

    @hookimpl
    def kmsenvelope_register_stores(self, register: Any) -> None:
        register("mem", self.open)


@pytest.fixture
def keys(keystore: Keystore) -> Keystore:
    keystore.create_key("old")
    keystore.create_key("new")
    return keystore


def engine_with(registry: ProviderRegistry) -> GuardedEngine:
    """A job engine over ``registry`` and the environment's config (the test keystore)."""
    return GuardedEngine(CallPolicy(), registry=registry, config=kmsenvelope.load_config())


def test_a_third_party_store_is_used_through_its_url(keys: Keystore) -> None:
    items = {f"k{i}": kmsenvelope.encrypt(f"v{i}".encode(), ["local:old"]) for i in range(12)}
    items["plain"] = b"not an envelope"
    plugin = MemoryStorePlugin({"bucket": items})
    registry = ProviderRegistry.load(allow=["local"])
    registry.add_plugin(plugin, name="memstore", distribution="kmsenvelope-memstore")
    assert registry.stores["mem"].plugin == "memstore"
    assert registry.stores["mem"].distribution == "kmsenvelope-memstore"
    engine = engine_with(registry)

    report = kmsenvelope.migrate("mem://bucket/some/prefix?region=eu", engine, PLAN)

    assert report.ok, report.failed
    assert len(report.migrated) == 12
    assert report.skipped == ["plain"]
    ((url, config),) = plugin.opened
    assert (url.scheme, url.host, url.path, dict(url.params)) == (
        "mem",
        "bucket",
        "some/prefix",
        {"region": "eu"},
    )
    assert config is engine.config  # the run's configuration
    for i in range(12):
        env = items[f"k{i}"]
        assert [r.key_id for r in kmsenvelope.inspect_envelope(env).recipients] == ["local:new/1"]
        assert kmsenvelope.decrypt(env) == f"v{i}".encode()


def test_a_factory_error_is_a_config_error_and_nothing_runs(keys: Keystore) -> None:
    registry = ProviderRegistry()
    registry.add_plugin(MemoryStorePlugin({}), name="memstore")
    with pytest.raises(ConfigError, match=r"store URL mem://nope: no bucket 'nope'"):
        kmsenvelope.migrate("mem://nope", engine_with(registry), PLAN)
    with pytest.raises(ConfigError, match=r"unknown parameter 'x' \(accepted: region\)"):
        kmsenvelope.migrate("mem://b?x=1", engine_with(registry), PLAN)


def test_unknown_scheme_names_the_installed_stores() -> None:
    registry = ProviderRegistry()
    registry.add_plugin(MemoryStorePlugin({}), name="memstore")
    engine = engine_with(registry)
    with pytest.raises(ConfigError) as caught:
        kmsenvelope.migrate("gcs://bucket", engine, PLAN)
    assert str(caught.value) == "no store is installed for URL scheme 'gcs' (installed: mem)"
    with pytest.raises(
        ConfigError,
        match=r"\(installed: mem\); install kmsenvelope\[s3\] \(or, if installed, allow the "
        r"'aws-kms' plugin",
    ):
        kmsenvelope.migrate("s3://bucket", engine, PLAN)
    with pytest.raises(ConfigError, match=r"install kmsenvelope\[azure-blob\].*'azure-kv'"):
        kmsenvelope.migrate("az://container", engine, PLAN)
    with pytest.raises(ConfigError, match=r"install kmsenvelope\[postgres\].*'stores' plugin"):
        kmsenvelope.migrate("postgresql://u@h/db?table=t&key=k&column=c", engine, PLAN)
    with pytest.raises(ConfigError, match="not a store URL"):
        kmsenvelope.migrate("some/folder", engine, PLAN)


def test_the_built_in_sqlite_store_comes_through_the_hook(keys: Keystore, tmp_path: Path) -> None:
    registry = ProviderRegistry.load(allow=["local", "stores"])
    assert set(registry.stores) >= {"sqlite"}  # and s3 when boto3 (kmsenvelope[s3]) is there
    assert registry.stores["sqlite"].plugin == "stores"
    assert registry.stores["sqlite"].distribution == "kmsenvelope"
    db = tmp_path / "app.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id TEXT PRIMARY KEY, env BLOB)")
    con.executemany(
        "INSERT INTO t VALUES (?, ?)",
        [("a", kmsenvelope.encrypt(b"A", ["local:old"])), ("b", None), ("c", b"\x00junk")],
    )
    con.commit()
    con.close()
    report = kmsenvelope.migrate(
        f"sqlite:///{db}?table=t&key=id&column=env", engine_with(registry), PLAN
    )
    assert report.migrated == ["a"]
    assert sorted(report.skipped) == ["b", "c"]
    assert report.skip_reasons["b"] == "NULL"
    con = sqlite3.connect(db)
    (env,) = con.execute("SELECT env FROM t WHERE id = 'a'").fetchone()
    assert con.execute("SELECT env FROM t WHERE id = 'b'").fetchone() == (None,)
    con.close()
    assert kmsenvelope.decrypt(env) == b"A"


def test_duplicate_store_scheme_is_a_plugin_error_and_keeps_nothing() -> None:
    registry = ProviderRegistry()
    registry.add_plugin(MemoryStorePlugin({}), name="first", distribution="dist-one")

    class Both:
        @hookimpl
        def kmsenvelope_register_providers(self, register: Any) -> None:
            register("both", lambda uri, settings: None)

        @hookimpl
        def kmsenvelope_register_stores(self, register: Any) -> None:
            register("mem", lambda url, config: None)

    with pytest.raises(PluginError) as caught:
        registry.add_plugin(Both(), name="second", distribution="dist-two")
    message = str(caught.value)
    assert "store URL scheme 'mem' is registered by both 'first' (dist-one)" in message
    assert "'second' (dist-two)" in message
    assert "KMSENVELOPE_BLOCK_PLUGINS" in message
    assert set(registry.stores) == {"mem"}
    assert registry.stores["mem"].plugin == "first"
    assert "both" not in registry.providers  # all or nothing


@pytest.mark.parametrize(
    ("scheme", "factory", "problem"),
    [
        ("S3", lambda url, config: None, "invalid store URL scheme 'S3'"),
        ("s3://", lambda url, config: None, "invalid store URL scheme 's3://'"),
        ("", lambda url, config: None, "invalid store URL scheme ''"),
        ("gcs", "not callable", "non-callable store factory for 'gcs'"),
    ],
)
def test_malformed_store_registration_is_a_plugin_error(
    scheme: str, factory: Any, problem: str
) -> None:
    class Bad:
        @hookimpl
        def kmsenvelope_register_stores(self, register: Any) -> None:
            register(scheme, factory)

    registry = ProviderRegistry()
    with pytest.raises(PluginError, match="plugin 'bad' registered") as caught:
        registry.add_plugin(Bad(), name="bad")
    assert problem in str(caught.value)
    assert registry.stores == {}


def test_a_store_factory_that_fails_is_a_plugin_error(keys: Keystore) -> None:
    class Broken:
        @hookimpl
        def kmsenvelope_register_stores(self, register: Any) -> None:
            register("boom", self.boom)
            register("odd", lambda url, config: object())

        def boom(self, url: StoreURL, config: Config) -> MemoryStore:
            raise RuntimeError("SDK exploded")

    registry = ProviderRegistry()
    registry.add_plugin(Broken(), name="broken-store")
    engine = engine_with(registry)
    with pytest.raises(PluginError, match="'boom' store of plugin 'broken-store' failed to open"):
        kmsenvelope.migrate("boom://x", engine, PLAN)
    with pytest.raises(PluginError, match="returned a object, not an EnvelopeStore"):
        kmsenvelope.migrate("odd://x", engine, PLAN)


def test_store_urls_parse_and_never_show_a_password() -> None:
    url = parse_store_url("postgresql://app:s3cr%40t@db.example:5432/payments?table=t&key=id")
    assert (url.scheme, url.username, url.password) == ("postgresql", "app", "s3cr@t")
    assert (url.host, url.port, url.path) == ("db.example", 5432, "payments")
    assert dict(url.params) == {"table": "t", "key": "id"}
    assert "s3cr" not in url.text
    assert "s3cr" not in repr(url)
    assert "s3cr" not in url.identity
    assert url.text.startswith("postgresql://app:***@db.example:5432/payments")
    with pytest.raises(ConfigError) as caught:
        url.check_params(required=("table", "key", "column"))
    assert "s3cr" not in str(caught.value)
    for bad, problem in {
        "postgresql://app:pw@db:99999/x": "invalid port '99999'",
        "s3://bucket/a#frag": "a fragment",
        "s3://bucket/a b": "percent-encoded",
        "s3://bucket?x=1&x=2": "given twice",
        "sqlite:///x.db?table": "NAME=VALUE",
    }.items():
        with pytest.raises(ConfigError, match=problem) as caught:
            parse_store_url(bad)
        assert "pw" not in str(caught.value)
    absolute = parse_store_url("sqlite:////var/db/app.db?table=t")
    assert absolute.local_path() == Path("/var/db/app.db")
    relative = parse_store_url("sqlite:///app.db?table=t")
    assert relative.local_path() == Path("app.db")
    assert relative.identity == f"sqlite:///{Path('app.db').resolve()}?table=t"
    with pytest.raises(ConfigError, match="no host"):
        parse_store_url("sqlite://host/app.db").local_path()


def test_a_store_plugin_installed_with_pip_works_from_the_cli(
    keys: Keystore, tmp_path: Path
) -> None:
    """A distribution on the path whose entry point registers ``jsonkv://``: the CLI migrates
    through it with no change to the core."""
    site = tmp_path / "site"
    info = site / "kmsenvelope_jsonkv-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: kmsenvelope-jsonkv\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text("[kmsenvelope]\njsonkv = kmsenvelope_jsonkv\n")
    (site / "kmsenvelope_jsonkv.py").write_text(JSONKV_PLUGIN)
    data = tmp_path / "items.json"
    items = {
        f"item{i}": kmsenvelope.encrypt(f"v{i}".encode(), ["local:old"]).hex() for i in range(5)
    }
    data.write_text(json.dumps(items))
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "KMSENVELOPE_PLUGINS": "local,jsonkv",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kmsenvelope",
            "migrate",
            f"jsonkv:///{data}",
            "--to",
            "local:new",
            "--remove",
            "local:old",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 items: 5 migrated" in proc.stderr
    for i, value in json.loads(data.read_text()).items():
        env_bytes = bytes.fromhex(value)
        assert [r.key_id for r in kmsenvelope.inspect_envelope(env_bytes).recipients] == [
            "local:new/1"
        ]
        assert kmsenvelope.decrypt(env_bytes) == f"v{i.removeprefix('item')}".encode()


JSONKV_PLUGIN = '''
"""A store plugin: envelopes as hex strings in one JSON object, ``jsonkv:///PATH``."""
import hashlib, io, json, threading
import kmsenvelope
from kmsenvelope.migrate import StoredItem


class JsonKV:
    def __init__(self, path):
        self.path, self.lock = path, threading.Lock()

    def _load(self):
        with open(self.path) as f:
            return json.load(f)

    def list(self):
        return sorted(self._load())

    def read(self, key):
        data = bytes.fromhex(self._load()[key])
        return StoredItem(io.BytesIO(data), hashlib.sha256(data).hexdigest())

    def write(self, key, version, writer):
        buf = io.BytesIO()
        writer(buf)
        with self.lock:
            items = self._load()
            if hashlib.sha256(bytes.fromhex(items[key])).hexdigest() != version:
                return False
            items[key] = buf.getvalue().hex()
            with open(self.path, "w") as f:
                json.dump(items, f)
        return True


@kmsenvelope.hookimpl
def kmsenvelope_register_stores(register):
    register("jsonkv", lambda url, config: (url.check_params(), JsonKV(url.local_path()))[1])
'''


def test_engine_without_stores_plugin_says_how_to_get_sqlite(tmp_path: Path) -> None:
    engine = Engine(registry=ProviderRegistry.load(allow=["local"]), config=Config())
    with pytest.raises(ConfigError, match="it is built in: allow the 'stores' plugin"):
        kmsenvelope.migrate(f"sqlite:///{tmp_path}/x.db?table=t&key=id&column=e", engine, PLAN)
