"""The provider as the engine sees it: registered as a plugin, configured by Config."""

from __future__ import annotations

import os
from importlib.metadata import entry_points

import pytest

from kmsenvelope import Config, Engine, NoRecipientError, ProviderRegistry
from kmsenvelope.errors import AccessDeniedError, UnknownSchemeError
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope_pkcs11 import close_all, create_key, plugin

CONTEXT = {"app": "billing", "record": "42"}


def registry() -> ProviderRegistry:
    """A registry holding only this plugin (never the ambient entry points)."""
    reg = ProviderRegistry()
    reg.add_plugin(plugin, name="pkcs11")
    return reg


def engine(providers: dict) -> Engine:
    """An engine that may contact any key of the test token (trust is tested elsewhere:
    test_pkcs11_strict_trust.py)."""
    allowed = ("pkcs11:token=kmsenv-test;*", "aws-cloudhsm:*")
    return Engine(registry=registry(), config=Config(providers=providers, allowed_keys=allowed))


def test_plugin_registers_both_schemes():
    providers = registry().providers
    assert set(providers) == {"pkcs11", "aws-cloudhsm"}
    assert providers["pkcs11"].plugin == "pkcs11"


def test_distribution_registers_through_the_kmsenvelope_entry_point_group():
    (ep,) = [e for e in entry_points(group="kmsenvelope") if e.name == "pkcs11"]
    assert ep.value == "kmsenvelope_pkcs11.plugin"
    assert ep.dist is not None
    assert ep.dist.name == "kmsenvelope-pkcs11"
    reg = ProviderRegistry.load(allow=["pkcs11"])
    assert set(reg.providers) == {"pkcs11", "aws-cloudhsm"}


def test_envelope_round_trip_through_the_engine(softhsm, aes_uri, rsa_uri):
    providers = {"pkcs11": softhsm.settings(oaep_hash="sha1")}
    recipients = [
        "pkcs11:token=kmsenv-test;object=aes-wrap",
        "pkcs11:token=kmsenv-test;object=rsa-wrap",
    ]
    payload = os.urandom(100_000)
    blob = engine(providers).encrypt(payload, recipients, CONTEXT, chunk_size=4096)
    info = engine(providers).inspect(blob)
    assert [r.key_id for r in info.recipients] == [aes_uri, rsa_uri]
    assert [r.algorithm for r in info.recipients] == ["AES-256-GCM", "RSA-OAEP-SHA1"]
    assert softhsm.pin.encode() not in blob
    close_all()  # decrypt in a fresh login, as another process would
    assert engine(providers).decrypt(blob, CONTEXT) == payload


def test_compact_armored_envelope(softhsm, aes_uri):
    providers = {"pkcs11": softhsm.settings(aes_mechanism="kwp")}
    text = engine(providers).encrypt(b"small secret", [aes_uri], CONTEXT, armor=True)
    assert engine(providers).decrypt(text, CONTEXT) == b"small secret"


def test_settings_from_the_config_reach_the_provider(softhsm, aes_uri):
    bad = engine({"pkcs11": softhsm.settings(pin="wrong-pin")})
    close_all()
    with pytest.raises(AccessDeniedError):
        bad.encrypt(b"x", [aes_uri], CONTEXT)


def test_pkcs11_unavailable_another_recipient_still_opens(softhsm, aes_uri, tmp_path):
    memory = InMemoryKEK.generate("backup")
    providers = {"pkcs11": softhsm.settings()}
    blob = engine(providers).encrypt(b"payload", [aes_uri, memory], CONTEXT)
    close_all()
    broken = {"pkcs11": {"module": str(tmp_path / "gone.so"), "pin": softhsm.pin}}
    assert engine(broken).decrypt(blob, CONTEXT, keys=[memory]) == b"payload"
    # Without the other key, the error lists what was tried and why, without the PIN.
    with pytest.raises(NoRecipientError) as info:
        engine(broken).decrypt(blob, CONTEXT)
    message = str(info.value)
    assert "gone.so" in message
    assert "does not exist" in message
    assert softhsm.pin not in message
    # And the HSM alone opens it.
    assert engine(providers).decrypt(blob, CONTEXT) == b"payload"


def test_aws_cloudhsm_scheme_through_the_engine(softhsm_bare, monkeypatch):
    softhsm_bare.init_token("hsm1", "cu_app:S3cret")
    uri = create_key(
        softhsm_bare.module, "hsm1", "cu_app:S3cret", "envelope-key", scheme="aws-cloudhsm"
    )
    assert uri.startswith("aws-cloudhsm:token=hsm1;object=envelope-key;id=")
    monkeypatch.setenv("CLOUDHSM_PIN", "cu_app:S3cret")
    providers = {
        "aws-cloudhsm": {
            "module": softhsm_bare.module,
            "gcm_iv": "host",
            "kwp_mechanism": "0x210A",
            "aes_mechanism": "kwp",
        }
    }
    blob = engine(providers).encrypt(b"cloud", ["aws-cloudhsm:object=envelope-key"], CONTEXT)
    (recipient,) = engine(providers).inspect(blob).recipients
    assert recipient.provider == "aws-cloudhsm"
    assert recipient.key_id == uri
    assert recipient.algorithm == "AES-KWP"
    assert engine(providers).decrypt(blob, CONTEXT) == b"cloud"


def test_unknown_scheme_when_plugin_not_added():
    with pytest.raises(UnknownSchemeError):
        Engine(registry=ProviderRegistry(), config=Config()).open_key("pkcs11:object=k")
