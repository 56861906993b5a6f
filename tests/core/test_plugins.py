"""The plugin host: entry points, allow/block lists, attribution, and misbehaving plugins."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from plugin_support import cli, needs_example

import kmsenvelope
from kmsenvelope import (
    Engine,
    NoRecipientError,
    ProviderError,
    ProviderRegistry,
    WrappedKey,
    hookimpl,
)
from kmsenvelope.config import Config
from kmsenvelope.errors import PluginError, UnknownSchemeError
from kmsenvelope.memory import InMemoryKEK


def test_local_is_loaded_through_the_entry_point_group() -> None:
    registry = ProviderRegistry.load(allow=["local"])
    info = registry.providers["local"]
    assert info.distribution == "kmsenvelope"
    assert info.plugin == "local"
    assert info.version == kmsenvelope.__version__


def test_allow_list_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "")
    assert ProviderRegistry.load().providers == {}
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local")
    assert set(ProviderRegistry.load().providers) == {"local"}


def test_block_list_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KMSENVELOPE_PLUGINS")
    monkeypatch.setenv("KMSENVELOPE_BLOCK_PLUGINS", "local, example")
    assert "local" not in ProviderRegistry.load().providers


def test_unknown_scheme_lists_installed() -> None:
    registry = ProviderRegistry.load(allow=["local"])
    with pytest.raises(UnknownSchemeError, match="installed: local"):
        registry.open("gcp-kms:projects/x", {})
    with pytest.raises(UnknownSchemeError):
        registry.open("no-scheme-here", {})


def test_duplicate_scheme_is_a_plugin_error() -> None:
    registry = ProviderRegistry()
    registry.register("dup", lambda uri, settings: InMemoryKEK.generate())
    with pytest.raises(PluginError, match="dup"):
        registry.register("dup", lambda uri, settings: InMemoryKEK.generate(), plugin="other")


def test_invalid_scheme_rejected() -> None:
    with pytest.raises((PluginError, ValueError)):
        ProviderRegistry().register("Bad Scheme", lambda uri, settings: InMemoryKEK.generate())


def test_plugin_failing_during_registration() -> None:
    class Broken:
        @hookimpl
        def kmsenvelope_register_providers(self, register: Any) -> None:
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="boom"):
        ProviderRegistry().add_plugin(Broken(), name="broken")


class _Flaky:
    """A provider that crashes with an arbitrary exception on unwrap."""

    def __init__(self, uri: str, settings: Mapping[str, Any]) -> None:
        self._uri = uri

    @property
    def key_id(self) -> str:
        return self._uri

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        return WrappedKey("flaky", self._uri, "NONE", b"\x00" * 32)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        raise ZeroDivisionError("plugin bug")


def test_plugin_exception_becomes_a_recipient_reason() -> None:
    registry = ProviderRegistry()
    registry.register("flaky", _Flaky)
    good = InMemoryKEK.generate("good")
    engine = Engine(registry=registry, config=Config())
    blob = engine.encrypt(b"data", ["flaky:key", good])
    # The flaky recipient fails with its exception as the reason; the good one still works.
    assert Engine(registry=registry, config=Config(), keys=[good]).decrypt(blob) == b"data"
    with pytest.raises(NoRecipientError) as info:
        engine.decrypt(blob)
    reasons = {a.key_id: a.reason for a in info.value.attempts}
    assert "ZeroDivisionError: plugin bug" in reasons["flaky:key"]
    assert "no provider is installed for scheme 'memory'" in reasons["memory:good"]


def test_wrap_exception_is_a_provider_error() -> None:
    class Bad(_Flaky):
        def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
            raise OSError("network down")

    registry = ProviderRegistry()
    registry.register("bad", Bad)
    with pytest.raises(ProviderError, match="bad:key: wrap failed"):
        Engine(registry=registry, config=Config()).encrypt(b"x", ["bad:key"])


def test_wrap_returning_inconsistent_key_id_rejected() -> None:
    class Liar(_Flaky):
        def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
            return WrappedKey("liar", "other:key", "NONE", b"x")

    registry = ProviderRegistry()
    registry.register("liar", Liar)
    with pytest.raises(ProviderError, match="does not start with its provider"):
        Engine(registry=registry, config=Config()).encrypt(b"x", ["liar:key"])


@needs_example
def test_third_party_plugin_listed_and_used_by_cli(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(json.dumps({"k1": os.urandom(32).hex()}))
    (tmp_path / "kmsenvelope.toml").write_text(f'[providers.example]\nkeyfile = "{keyfile}"\n')
    env = {
        **os.environ,
        "KMSENVELOPE_PLUGINS": "local,example",
        "KMSENVELOPE_CONFIG": str(tmp_path / "kmsenvelope.toml"),
    }
    listed = cli(["providers", "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {r["scheme"]: r for r in json.loads(listed.stdout)}
    assert rows["example"]["distribution"] == "kmsenvelope-example-plugin"
    assert rows["example"]["version"] == "1.2.3"
    (tmp_path / "plain").write_bytes(b"third party")
    enc = cli(["encrypt", "-i", "plain", "-o", "env", "--to", "example:k1"], env, tmp_path)
    assert enc.returncode == 0, enc.stderr
    # Strict by default: the envelope's key is contacted once the user allows it.
    refused = cli(["decrypt", "-i", "env", "-o", "back"], env, tmp_path)
    assert refused.returncode == 4
    assert "--allow example:k1," in refused.stderr
    dec = cli(["decrypt", "-i", "env", "-o", "back", "--allow", "example:*"], env, tmp_path)
    assert dec.returncode == 0, dec.stderr
    assert (tmp_path / "back").read_bytes() == b"third party"
    # Blocked: the scheme is unknown and the envelope cannot be opened.
    blocked = {**env, "KMSENVELOPE_BLOCK_PLUGINS": "example"}
    enc2 = cli(["encrypt", "-i", "plain", "-o", "env2", "--to", "example:k1"], blocked, tmp_path)
    assert enc2.returncode == 5
    assert "no provider is installed for scheme 'example'" in enc2.stderr
    dec2 = cli(["decrypt", "-i", "env", "-o", "back2"], blocked, tmp_path)
    assert dec2.returncode == 4
    assert not (tmp_path / "back2").exists()


@needs_example
def test_third_party_plugin_exception_is_reported_not_raised(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(json.dumps({"explode": os.urandom(32).hex()}))
    registry = ProviderRegistry.load(allow=["example"])
    config = Config(providers={"example": {"keyfile": str(keyfile)}})
    with pytest.raises(ProviderError, match="exploded on purpose"):
        Engine(registry=registry, config=config).encrypt(b"x", ["example:explode"])


def test_tests_do_not_see_ambient_plugins() -> None:
    """The autouse fixture pins the allow-list; only the local provider is visible."""
    assert os.environ["KMSENVELOPE_PLUGINS"] == "local"
    assert set(kmsenvelope.default_engine().registry.providers) == {"local"}
