"""Where the encryption context of an Azure Key Vault recipient is bound: in the HSM, or only in
the envelope.

* **oct-HSM keys, A256GCM (the default).** The data key is wrapped with Managed HSM's
  ``encrypt`` and the context as AAD, so the HSM itself refuses to decrypt it under any other
  context. These tests watch the emulated service: the refusal is the HSM's own 400 on
  ``decrypt``, recorded with the AAD it was sent -- not the envelope's header MAC.
* **RSA keys (RSA-OAEP-256) and oct-HSM keys with ``oct_algorithm = "A256KW"``.** Key Vault's
  ``wrapKey`` takes no AAD (RSA-OAEP has none), so the service unwraps under any context and
  only the envelope's header MAC refuses another one.
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure_hsm_roles import CRYPTO_USER, role_engine, role_settings
from azure_kv_cloud import Cloud, unique, uri_of

from kmsenvelope import AuthenticationError, DecryptionError, NoRecipientError
from kmsenvelope.errors import UnwrapError
from kmsenvelope_azure.algorithms import context_aad
from kmsenvelope_azure.provider import AzureKeyVaultProvider

CONTEXT = {"app": "billing", "tenant": "t-1"}
OTHER = {"app": "billing", "tenant": "t-2"}


@pytest.fixture
def gcm_key(hsm_admin: KeyClient) -> KeyVaultKey:
    return hsm_admin.create_oct_key(unique("ctx-oct"), size=256, hardware_protected=True)


def test_hsm_refuses_a_stanza_under_another_context(cloud: Cloud, gcm_key: KeyVaultKey) -> None:
    """Wrapped under CONTEXT by the engine: the HSM decrypts it under CONTEXT only."""
    settings = role_settings(cloud, CRYPTO_USER)
    blob = role_engine(settings).encrypt(b"bound in the HSM", [uri_of(gcm_key)], CONTEXT)
    (stanza,) = role_engine(settings).inspect(blob).recipients
    assert stanza.algorithm == "A256GCM"
    assert dict(stanza.params) == {"aad": "context-v1"}

    kek = AzureKeyVaultProvider()(stanza.key_id, settings)
    name = gcm_key.name
    assert len(kek.unwrap(stanza, CONTEXT)) == 32
    assert cloud.hsm.aads("decrypt", name, status=200) == [context_aad(CONTEXT)]
    # The context the engine was given is the AAD the HSM encrypted under.
    assert cloud.hsm.aads("encrypt", name, status=200) == [context_aad(CONTEXT)]

    for other in (OTHER, {}, {"app": "billing"}):
        refused = cloud.hsm.count("decrypt", name, status=400)
        with pytest.raises(UnwrapError, match="decrypt rejected") as info:
            AzureKeyVaultProvider()(stanza.key_id, settings).unwrap(stanza, other)
        assert "another encryption context" in str(info.value)
        assert "BadParameter" in str(info.value)  # the service's own refusal, passed on
        # The service was called with the other context as AAD, and it refused.
        assert cloud.hsm.count("decrypt", name, status=400) == refused + 1
        assert cloud.hsm.aads("decrypt", name, status=400)[-1] == context_aad(other)


def test_a_context_rewritten_in_the_header_is_refused_by_the_hsm(
    cloud: Cloud, gcm_key: KeyVaultKey
) -> None:
    """The reader hands the header's context to the HSM: a rewritten one fails there, before
    the envelope's header MAC is ever checked (NoRecipientError, not AuthenticationError)."""
    settings = role_settings(cloud, CRYPTO_USER)
    blob = role_engine(settings).encrypt(b"header context", [uri_of(gcm_key)], CONTEXT)
    tampered = blob.replace(b"t-1", b"t-2", 1)
    assert tampered != blob
    reader = role_engine(settings, fresh=True)
    with pytest.raises(NoRecipientError) as info:
        reader.decrypt(tampered)
    (attempt,) = info.value.attempts
    assert isinstance(attempt.error, UnwrapError)
    assert cloud.hsm.count("decrypt", gcm_key.name, status=400) == 1
    assert cloud.hsm.aads("decrypt", gcm_key.name, status=400) == [context_aad(OTHER)]
    assert cloud.hsm.count("decrypt", gcm_key.name, status=200) == 0


def test_engine_round_trip_through_the_hsm(cloud: Cloud, gcm_key: KeyVaultKey) -> None:
    settings = role_settings(cloud, CRYPTO_USER)
    blob = role_engine(settings).encrypt(b"round trip", [uri_of(gcm_key)], CONTEXT)
    reader = role_engine(settings, fresh=True)
    assert reader.decrypt(blob, CONTEXT) == b"round trip"
    assert reader.decrypt(blob) == b"round trip"
    assert cloud.hsm.aads("decrypt", gcm_key.name, status=200) == [context_aad(CONTEXT)] * 2
    with pytest.raises(AuthenticationError):
        reader.decrypt(blob, OTHER)  # the caller's expectation, checked against the header


@pytest.mark.parametrize(
    ("key_fixture", "algorithm", "extra"),
    [
        ("rsa_key", "RSA-OAEP-256", {}),  # RSA-OAEP has no AAD: nothing to send
        ("oct_key", "A256KW", {"oct_algorithm": "A256KW"}),  # the key-wrap fallback
    ],
)
def test_without_aad_the_service_unwraps_under_any_context_and_the_envelope_refuses(
    key_fixture: str,
    algorithm: str,
    extra: dict[str, str],
    request: pytest.FixtureRequest,
    cloud: Cloud,
    make_engine: Any,
) -> None:
    key: KeyVaultKey = request.getfixturevalue(key_fixture)
    uri = uri_of(key)
    engine = make_engine(**extra)
    blob = engine.encrypt(b"context in the header", [uri], CONTEXT)
    (stanza,) = engine.inspect(blob).recipients
    assert stanza.algorithm == algorithm
    assert dict(stanza.params) == {}

    # The service unwraps the recipient whatever context is given: it has nowhere to bind it.
    settings = cloud.settings(**extra)
    opened = [
        AzureKeyVaultProvider()(stanza.key_id, settings).unwrap(stanza, context)
        for context in (CONTEXT, {}, OTHER)
    ]
    assert len(opened[0]) == 32
    assert opened == [opened[0]] * 3

    # The envelope refuses another context, and a context rewritten inside its header.
    reader = make_engine(fresh=True, keys=(AzureKeyVaultProvider()(uri, settings),), **extra)
    assert reader.decrypt(blob, CONTEXT) == b"context in the header"
    with pytest.raises(AuthenticationError):
        reader.decrypt(blob, OTHER)
    tampered = blob.replace(b"t-1", b"t-2", 1)
    assert tampered != blob
    with pytest.raises(DecryptionError):
        reader.decrypt(tampered)
