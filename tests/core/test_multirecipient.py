"""Envelopes for several local keys: any one opens it; errors list every recipient."""

from __future__ import annotations

import pytest

import kmsenvelope
from kmsenvelope import Engine, NoRecipientError, ProviderRegistry
from kmsenvelope.config import Config
from kmsenvelope.local import Keystore
from kmsenvelope.local.provider import factory


def test_two_local_keys_either_decrypts(keystore: Keystore, keystore_dir: object) -> None:
    keystore.create_key("alpha")
    keystore.create_key("beta", "rsa3072")
    blob = kmsenvelope.encrypt(b"shared secret", ["local:alpha", "local:beta"], {"app": "x"})
    ids = [r.key_id for r in kmsenvelope.inspect_envelope(blob).recipients]
    assert ids == ["local:alpha/1", "local:beta/1"]
    settings = {"keystore": str(keystore_dir)}
    for uri in ("local:alpha", "local:beta"):
        # An engine with no providers at all, holding just one KEK.
        only = Engine(registry=ProviderRegistry(), config=Config(), keys=[factory(uri, settings)])
        assert only.decrypt(blob) == b"shared secret"

    # Destroy alpha's version 1: beta still opens it.
    keystore.rotate("alpha")
    keystore.destroy_version("alpha", 1)
    assert kmsenvelope.decrypt(blob) == b"shared secret"

    # Destroy beta's version 1 too: nothing opens it, and the error says why for both.
    keystore.rotate("beta")
    keystore.destroy_version("beta", 1)
    with pytest.raises(NoRecipientError) as info:
        kmsenvelope.decrypt(blob)
    attempts = info.value.attempts
    assert [a.key_id for a in attempts] == ["local:alpha/1", "local:beta/1"]
    assert all("destroyed" in a.reason for a in attempts)
    assert "local:alpha/1" in str(info.value)
    assert "local:beta/1" in str(info.value)


def test_unknown_provider_recipient_is_skipped(keystore: Keystore) -> None:
    """A recipient whose provider is not installed is skipped; the next one is used."""
    from kmsenvelope.memory import InMemoryKEK

    keystore.create_key("gamma")
    mem = InMemoryKEK.generate("skipme")
    blob = kmsenvelope.encrypt(b"payload", [mem, "local:gamma"])
    assert kmsenvelope.decrypt(blob) == b"payload"


def test_missing_key_reported(keystore: Keystore) -> None:
    keystore.create_key("temp")
    blob = kmsenvelope.encrypt(b"payload", ["local:temp"])
    (keystore.directory / "keys" / "temp.json").unlink()
    with pytest.raises(NoRecipientError, match="no such key"):
        kmsenvelope.decrypt(blob)
