"""Strict by default with PKCS#11: the URI a user names (token and label) vouches for the key it
finds, recorded with its CKA_ID; an envelope naming another object is refused before any HSM
call."""

from __future__ import annotations

import pytest

from kmsenvelope import Config, Engine, NoRecipientError, ProviderRegistry
from kmsenvelope_pkcs11 import close_all, plugin


def _engine(providers: dict, recipients: tuple[str, ...] = ()) -> Engine:
    reg = ProviderRegistry()
    reg.add_plugin(plugin, name="pkcs11")
    return Engine(registry=reg, config=Config(providers=providers, recipients=recipients))


def test_named_label_opens_the_recorded_key(softhsm, aes_uri):
    providers = {"pkcs11": softhsm.settings()}
    named = "pkcs11:token=kmsenv-test;object=aes-wrap"
    blob = _engine(providers).encrypt(b"hsm", [named], {"a": "b"})
    assert _engine(providers).inspect(blob).recipients[0].key_id == aes_uri  # adds ;id=%01%02
    assert aes_uri != named
    close_all()
    assert _engine(providers, (named,)).decrypt(blob) == b"hsm"
    with pytest.raises(NoRecipientError, match="not a key you named"):
        _engine(providers).decrypt(blob)


def test_another_object_on_the_same_token_is_not_opened(softhsm, aes_uri):
    providers = {"pkcs11": softhsm.settings()}
    other = softhsm.create_key("other-wrap", "aes256", key_id=b"\x09")
    blob = _engine(providers).encrypt(b"other", [other])
    reader = _engine(providers, ("pkcs11:token=kmsenv-test;object=aes-wrap",))
    with pytest.raises(NoRecipientError) as info:
        reader.decrypt(blob)
    assert "not a key you named" in str(info.value)
