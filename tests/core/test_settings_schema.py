"""The provider settings schema: one set of rules for TOML values and environment strings,
unknown names refused with a "did you mean", errors that name file:line or the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kmsenvelope import Config, ConfigError, Engine, ProviderRegistry, load_config
from kmsenvelope.kek import WrappedKey
from kmsenvelope.local.provider import LOCAL_SETTINGS, keystore_dir
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope.settings import Setting, SettingsSchema

SCHEMA = SettingsSchema(
    "vault",
    (
        Setting("address", "string", help="server URL"),
        Setting("token", "string", secret=True),
        Setting("retries", "integer", 3, minimum=0, maximum=10),
        Setting("timeout", "number", 5.0, minimum=0, exclusive_minimum=True),
        Setting("verify", "boolean", True),
        Setting("ca_file", "path"),
        Setting("plugin_library", "path", loads_code=True),
        Setting("namespaces", "list", ()),
        Setting("mode", "string", "fast", choices=("fast", "safe-mode")),
    ),
)


class VaultKEK:
    """A third-party style provider that declares ``SCHEMA`` and records what it was given."""

    opened: list[Mapping[str, Any]] = []  # noqa: RUF012 - test recorder
    inner = InMemoryKEK(bytes(range(32)), "vault-inner")

    def __init__(self, uri: str, settings: Mapping[str, Any]) -> None:
        self.values = SCHEMA.parse(settings)
        VaultKEK.opened.append(self.values)
        self.uri = uri

    @property
    def key_id(self) -> str:
        return self.uri

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        w = self.inner.wrap(dek, context)
        return WrappedKey("vault", self.uri, w.algorithm, w.ciphertext)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        inner = WrappedKey("memory", self.inner.key_id, wrapped.algorithm, wrapped.ciphertext)
        return self.inner.unwrap(inner, context)


def _registry() -> ProviderRegistry:
    registry = ProviderRegistry()
    registry.register("vault", VaultKEK, schema=SCHEMA)
    return registry


def test_toml_values_and_environment_strings_follow_the_same_rules(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[providers.vault]\n"
        'address = " https://vault.example "\n'
        "retries = 7\ntimeout = 2.5\nverify = false\n"
        'namespaces = ["a", "b"]\nmode = "SAFE_MODE"\n'
    )
    from_file = SCHEMA.parse(load_config(path, env={}).provider_settings("vault"))
    prefix = "KMSENVELOPE_PROVIDERS__VAULT__"
    env = {
        f"{prefix}ADDRESS": "https://vault.example",
        f"{prefix}RETRIES": "7",
        f"{prefix}TIMEOUT": "2.5",
        f"{prefix}VERIFY": "no",
        f"{prefix}NAMESPACES": "a, b",
        f"{prefix}MODE": "safe-mode",
    }
    from_env = SCHEMA.parse(load_config(None, env=env).provider_settings("vault"))
    assert dict(from_file) == dict(from_env)
    assert from_file["address"] == "https://vault.example"
    assert (from_file["retries"], from_file["timeout"], from_file["verify"]) == (7, 2.5, False)
    assert from_file["namespaces"] == ("a", "b")
    assert from_file["mode"] == "safe-mode"
    assert from_file.given == {"address", "retries", "timeout", "verify", "namespaces", "mode"}
    defaults = SCHEMA.parse({})
    assert (defaults["retries"], defaults["verify"], defaults["token"]) == (3, True, None)
    assert SCHEMA.parse({"retries": "0x0A", "ca_file": "~/ca.pem"})["retries"] == 10
    assert SCHEMA.parse({"ca_file": "~/ca.pem"})["ca_file"] == os.path.expanduser("~/ca.pem")


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(ConfigError) as info:
        SCHEMA.parse({"adress": "x"})
    assert str(info.value) == (
        "unknown setting 'adress' in [providers.vault] (did you mean 'address'?)"
    )
    with pytest.raises(ConfigError) as info:
        SCHEMA.parse({"zzz": 1})
    assert str(info.value).startswith(
        "unknown setting 'zzz' in [providers.vault] (known: address, ca_file, mode,"
    )


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("retries", 11, "must be a whole number from 0 to 10, not 11"),
        ("retries", "2.5", "must be a whole number from 0 to 10, not '2.5'"),
        ("retries", True, "must be a whole number from 0 to 10, not True"),
        ("retries", 2.0, "must be a whole number from 0 to 10, not 2.0"),
        ("timeout", 0, "must be a number more than 0, not 0"),
        ("timeout", "nan", "must be a number more than 0, not 'nan'"),
        ("verify", "maybe", "must be true or false, not 'maybe'"),
        ("verify", 1, "must be true or false, not 1"),
        ("address", "  ", "must be a non-empty string, not '  '"),
        ("namespaces", 3, "must be a list of strings (or one comma-separated string), not 3"),
        ("mode", "slow", "must be one of: fast, safe-mode, not 'slow'"),
        ("plugin_library", "lib/x.so", "must be an absolute path: it names code to load"),
        ("plugin_library", "./x.so", "must be an absolute path: it names code to load"),
    ],
)
def test_one_line_errors(name: str, value: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        SCHEMA.parse({name: value})
    assert str(info.value).startswith(f"setting '{name}' in [providers.vault] {problem}")
    assert "\n" not in str(info.value)


def test_secret_values_are_never_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        SCHEMA.parse({"token": 123456789})
    assert "123456789" not in str(info.value)
    assert "'token' in [providers.vault] must be a non-empty string" in str(info.value)
    parsed = SCHEMA.parse({"token": " s3cr3t "})
    assert parsed["token"] == " s3cr3t "  # secrets are taken verbatim
    assert "s3cr3t" not in repr(parsed)


def test_errors_name_the_file_line_profile_line_or_variable(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[providers.vault]\n"
        'address = "https://v"\n'
        "retries = 99\n"
        "[profiles.prod.providers.vault]\n"
        "timeot = 3\n"
    )
    with pytest.raises(ConfigError) as info:
        SCHEMA.parse(load_config(path, env={}).provider_settings("vault"))
    assert str(info.value).startswith(f"{path}:3: setting 'retries' in [providers.vault] must")
    path.write_text(path.read_text().replace("retries = 99", "retries = 9"))
    with pytest.raises(ConfigError) as info:
        SCHEMA.parse(load_config(path, profile="prod", env={}).provider_settings("vault"))
    assert str(info.value) == (
        f"{path}:5: unknown setting 'timeot' in [providers.vault] (did you mean 'timeout'?)"
    )
    env = {"KMSENVELOPE_PROVIDERS__VAULT__RETRIES": "many"}
    with pytest.raises(ConfigError) as info:
        SCHEMA.parse(load_config(path, env=env).provider_settings("vault"))
    assert str(info.value).startswith(
        "environment variable KMSENVELOPE_PROVIDERS__VAULT__RETRIES: setting 'retries' in "
        "[providers.vault] must be a whole number from 0 to 10, not 'many'"
    )


def test_registry_checks_a_declared_schema_before_the_factory_runs() -> None:
    VaultKEK.opened = []
    registry = _registry()
    assert registry.schemas == {"vault": SCHEMA}
    assert registry.providers["vault"].schema is SCHEMA
    config = Config(providers={"vault": {"adress": "https://v"}})
    with pytest.raises(ConfigError, match=r"did you mean 'address'"):
        Engine(registry=registry, config=config).encrypt(b"x", ["vault:k"])
    assert VaultKEK.opened == []
    good = Engine(registry=registry, config=Config(providers={"vault": {"retries": "2"}}))
    blob = good.encrypt(b"x", ["vault:k"])
    assert good.decrypt(blob) == b"x"
    assert VaultKEK.opened[0]["retries"] == 2


def test_schema_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="loads_code requires type 'path'"):
        Setting("library", "string", loads_code=True)
    with pytest.raises(ValueError, match="twice"):
        SettingsSchema("x", (Setting("a"), Setting("a")))
    with pytest.raises(ValueError, match="must match"):
        Setting("Bad-Name")
    registry = ProviderRegistry()
    from kmsenvelope.errors import PluginError

    with pytest.raises(PluginError, match="schema"):
        registry.register("other", VaultKEK, schema=SCHEMA)  # the schema is for 'vault'


# -- the local provider --------------------------------------------------------------------------


def test_local_typo_is_an_error_not_the_default_keystore(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'recipients = ["local:k"]\n\n[providers.local]\nkeystor = "{tmp_path}"\n')
    settings = load_config(path, env={}).provider_settings("local")
    with pytest.raises(ConfigError) as info:
        keystore_dir(settings)
    assert str(info.value) == (
        f"{path}:4: unknown setting 'keystor' in [providers.local] (did you mean 'keystore'?)"
    )
    with pytest.raises(ConfigError, match="did you mean 'keystore'"):
        Engine(config=load_config(path, env={})).open_key("local:k")
    assert LOCAL_SETTINGS.names == ("keystore", "socket", "daemon_uid", "audit_sync")
    assert keystore_dir({"keystore": str(tmp_path)}) == tmp_path


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def test_cli_local_typo_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[providers.local]\nkeystor = "{tmp_path / "ks"}"\n')
    env = {**os.environ, "KMSENVELOPE_KEYSTORE_PASSPHRASE": "correct horse battery"}
    out = _cli(["--config", str(path), "keys", "list"], env, tmp_path)
    assert out.returncode == 2
    assert out.stderr == (
        f"kmsenvelope: error: {path}:2: unknown setting 'keystor' in [providers.local] "
        "(did you mean 'keystore'?)\n"
    )
    env["KMSENVELOPE_PROVIDERS__LOCAL__KEYSTOR"] = str(tmp_path / "ks")
    out = _cli(["keys", "list"], env, tmp_path)
    assert out.returncode == 2
    assert out.stderr == (
        "kmsenvelope: error: environment variable KMSENVELOPE_PROVIDERS__LOCAL__KEYSTOR: "
        "unknown setting 'keystor' in [providers.local] (did you mean 'keystore'?)\n"
    )


def test_config_show_is_an_allow_list(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[providers.local]\n"
        f'keystore = "{tmp_path}"\n'
        'secretkey = "local-undeclared-value"\n'
        "[providers.pkcs11]\n"
        'module = "/usr/lib/softhsm/libsofthsm2.so"\ntoken = "label-1"\npin = "1234"\n'
        'connection_string = "AccountKey=pkcs11-undeclared"\n'
        "[providers.thirdparty]\n"
        'secretkey = "third-party-secret"\nconnection_string = "AccountKey=abc"\nregion = "x"\n'
    )
    env = {**os.environ, "KMSENVELOPE_PLUGINS": "local,pkcs11"}
    out = _cli(["--config", str(path), "config", "show"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    for secret in ("local-undeclared", "1234", "pkcs11-undeclared", "third-party", "AccountKey"):
        assert secret not in out.stdout
    shown = json.loads(out.stdout)["providers"]
    assert shown["local"] == {"keystore": str(tmp_path), "secretkey": "***"}
    assert shown["pkcs11"] == {
        "module": "/usr/lib/softhsm/libsofthsm2.so",
        "token": "label-1",
        "pin": "***",
        "connection_string": "***",
    }
    assert shown["thirdparty"] == {
        "secretkey": "***",
        "connection_string": "***",
        "region": "***",
    }
