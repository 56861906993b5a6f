"""``allowed_keys``: an envelope from an untrusted source cannot make decryption open a key
(call a KMS, an HSM, a host) that is not on the caller's list."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from core_support import SharedKeyProvider

import kmsenvelope
from kmsenvelope import ConfigError, Engine, NoRecipientError, ProviderRegistry
from kmsenvelope.config import Config, load_config
from kmsenvelope.kek import WrappedKey
from kmsenvelope.local import Keystore
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope.rewrapping import RewrapPlan, rewrap_bytes


class Recorder(SharedKeyProvider):
    """A provider whose factory records every key it is asked to open."""

    scheme = "rec"
    opened: ClassVar[list[str]] = []

    def __init__(self, uri: str, settings: Mapping[str, Any]) -> None:
        Recorder.opened.append(uri)
        super().__init__(uri, settings)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        inner = WrappedKey("memory", self.kek.key_id, wrapped.algorithm, wrapped.ciphertext)
        return self.kek.unwrap(inner, context)


@pytest.fixture
def registry() -> ProviderRegistry:
    Recorder.opened = []
    reg = ProviderRegistry()
    reg.register("rec", Recorder)
    return reg


def test_keys_outside_the_list_are_never_opened(registry: ProviderRegistry) -> None:
    writer = Engine(registry=registry, config=Config())
    blob = writer.encrypt(b"payload", ["rec:evil-host/key", "rec:trusted/key"])
    Recorder.opened = []
    reader = Engine(registry=registry, config=Config(), allowed_keys=["rec:trusted/*"])
    assert reader.decrypt(blob) == b"payload"
    assert Recorder.opened == ["rec:trusted/key"]  # the other recipient was skipped unopened


def test_nothing_allowed_is_a_no_recipient_error_that_says_why(registry: ProviderRegistry) -> None:
    blob = Engine(registry=registry, config=Config()).encrypt(b"x", ["rec:a", "rec:b"])
    Recorder.opened = []
    reader = Engine(registry=registry, config=Config(), allowed_keys=["local:*", "rec:c"])
    with pytest.raises(NoRecipientError) as info:
        reader.decrypt(blob)
    assert Recorder.opened == []
    assert [a.key_id for a in info.value.attempts] == ["rec:a", "rec:b"]
    for attempt in info.value.attempts:
        assert "not in allowed_keys" in attempt.reason
        assert "local:*, rec:c" in attempt.reason


def test_patterns_are_case_sensitive_and_whole_uri(registry: ProviderRegistry) -> None:
    engine = Engine(registry=registry, config=Config(), allowed_keys=["rec:Key?", "local:*"])
    assert engine.key_allowed("rec:Key1")
    assert not engine.key_allowed("rec:key1")
    assert not engine.key_allowed("rec:Key12")
    assert not engine.key_allowed("xrec:Key1")
    assert engine.key_allowed("local:payments/3")
    # Strict by default: with no allowed_keys, a key nobody named is not contacted.
    assert not Engine(registry=registry, config=Config()).key_allowed("anything:at-all")


def test_supplied_keys_are_always_usable(registry: ProviderRegistry) -> None:
    mem = InMemoryKEK.generate("mine")
    blob = Engine(registry=registry, config=Config()).encrypt(b"mine", [mem])
    reader = Engine(registry=registry, config=Config(), allowed_keys=["rec:none"])
    assert reader.decrypt(blob, keys=[mem]) == b"mine"


def test_engine_argument_overrides_the_config(registry: ProviderRegistry) -> None:
    blob = Engine(registry=registry, config=Config()).encrypt(b"x", ["rec:a"])
    config = Config(allowed_keys=("rec:b",))
    with pytest.raises(NoRecipientError):
        Engine(registry=registry, config=config).decrypt(blob)
    assert Engine(registry=registry, config=config, allowed_keys=["rec:*"]).decrypt(blob) == b"x"
    with pytest.raises(TypeError):
        Engine(registry=registry, config=config, allowed_keys="rec:*")
    with pytest.raises(ConfigError, match="spell the URL's host out"):
        Engine(registry=registry, config=config, allowed_keys=["azure-kv:https://v.example*"])
    with pytest.raises(ConfigError, match="is empty"):
        Engine(registry=registry, config=config, allowed_keys=[])


def test_rotation_does_not_contact_keys_outside_the_list(keystore: Keystore) -> None:
    keystore.create_key("inside")
    keystore.create_key("outside")
    blob = kmsenvelope.encrypt(b"rotate me", ["local:inside", "local:outside"])
    keystore.rotate("inside")
    keystore.rotate("outside")
    engine = Engine(config=load_config(), allowed_keys=["local:inside*"])
    new, result = rewrap_bytes(engine, blob, RewrapPlan(rotate=True))
    assert result.rotated == ("local:inside/1 -> local:inside/2",)
    ids = [r.key_id for r in kmsenvelope.inspect_envelope(new).recipients]
    assert ids == ["local:inside/2", "local:outside/1"]
    assert engine.decrypt(new) == b"rotate me"


def test_rotation_refuses_a_new_version_the_list_would_refuse(keystore: Keystore) -> None:
    keystore.create_key("pinned")
    blob = kmsenvelope.encrypt(b"pinned", ["local:pinned"])
    keystore.rotate("pinned")
    engine = Engine(config=load_config(), allowed_keys=["local:pinned/1"])
    with pytest.raises(ConfigError, match=r"local:pinned/2, which allowed_keys does not allow"):
        rewrap_bytes(engine, blob, RewrapPlan(rotate=True))
    assert engine.decrypt(blob) == b"pinned"  # the old envelope still opens


# -- configuration ------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kmsenvelope.toml"
    path.write_text(text)
    return path


def test_config_file_profile_and_environment(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'allowed_keys = ["local:*"]\n'
        "[profiles.prod]\n"
        'allowed_keys = ["aws-kms:arn:aws:kms:eu-west-1:111122223333:key/*"]\n',
    )
    assert load_config(path, env={}).allowed_keys == ("local:*",)
    prod = load_config(path, profile="prod", env={})
    assert prod.allowed_keys == ("aws-kms:arn:aws:kms:eu-west-1:111122223333:key/*",)
    env = {"KMSENVELOPE_ALLOWED_KEYS": " local:a , pkcs11:token=hsm;object=* "}
    assert load_config(path, env=env).allowed_keys == ("local:a", "pkcs11:token=hsm;object=*")
    assert Config().allowed_keys is None  # by default any key may be opened
    assert "allowed_keys" in load_config(path, env={}).redacted()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"local:*"', "must be a list"),
        ("[]", "is empty"),
        ('["payments"]', "not a key-URI pattern"),
        ('["*"]', "not a key-URI pattern"),
        ("[1]", "must be a list"),
        ('["azure-kv:https://billing.vault.azure.net*"]', "spell the URL's host out"),
        ('["azure-kv:https://*.vault.azure.net/keys/*"]', "spell the URL's host out"),
        ('["azure-kv:https://billing.vault.azure.net?keys/*"]', "spell the URL's host out"),
        ('["azure-kv:https*"]', "spell the URL's host out"),
        ('["azure-kv:https:/*"]', "spell the URL's host out"),
        ('["azure-kv:h?tps://billing.vault.azure.net/keys/*"]', "spell the URL's host out"),
    ],
)
def test_bad_config_values_name_the_key_and_line(tmp_path: Path, value: str, problem: str) -> None:
    path = _write(tmp_path, f'recipients = ["local:a"]\nallowed_keys = {value}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert f"{path}:2" in message
    assert "allowed_keys" in message
    assert problem in message


def test_patterns_set_on_config_in_code_are_checked_too() -> None:
    with pytest.raises(TypeError, match="not one string"):
        Config(allowed_keys="local:*")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="spell the URL's host out"):
        Config(allowed_keys=("azure-kv:https://v.example*",))
    assert Config(allowed_keys=["local:a/*"]).allowed_keys == ("local:a/*",)  # type: ignore[arg-type]


def test_host_spelled_out_or_any_key_of_a_provider_is_accepted() -> None:
    exact = "azure-kv:https://billing.vault.azure.net/keys/invoices/0123abcd"
    patterns = (
        "azure-kv:https://billing.vault.azure.net/keys/*",
        "azure-kv:https://billing.vault.azure.net:8443/keys/?nvoices/*",
        exact,
        "azure-kv:*",  # every key of the provider, on any host: explicit, so allowed
        "aws-kms:arn:aws:kms:eu-west-1:111122223333:key/*",
    )
    engine = Engine(registry=ProviderRegistry(), config=Config(), allowed_keys=patterns[:3])
    assert engine.key_allowed(exact)
    assert not engine.key_allowed("azure-kv:https://billing.vault.azure.net.evil.example/keys/x")
    assert Config(allowed_keys=patterns).allowed_keys == patterns


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="KMSENVELOPE_ALLOWED_KEYS: 'vault' is not a key-URI"):
        load_config(None, env={"KMSENVELOPE_ALLOWED_KEYS": "vault"})


def test_cli_refuses_keys_outside_the_list(
    keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keystore.create_key("payments")
    blob = kmsenvelope.encrypt(b"cli payload", ["local:payments"])
    sealed = tmp_path / "sealed.kmsenv"
    sealed.write_bytes(blob)

    def decrypt(allowed: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KMSENVELOPE_ALLOWED_KEYS": allowed}
        return subprocess.run(
            [sys.executable, "-m", "kmsenvelope", "decrypt", "-i", str(sealed)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )

    refused = decrypt("aws-kms:*")
    assert refused.returncode == 4, refused.stderr
    assert "local:payments/1: not in allowed_keys" in refused.stderr
    assert "Traceback" not in refused.stderr
    allowed = decrypt("local:payments*")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == "cli payload"
