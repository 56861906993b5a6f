"""What binds the encryption context for Azure Key Vault recipients: the envelope, not the service.

Key Vault's ``wrapKey``/``unwrapKey`` take no additional authenticated data -- neither for
RSA-OAEP-256 (RSA keys, wrapped locally with the public key) nor for A256KW (Managed HSM
oct-HSM keys); the service's AAD field exists only for AES-GCM ``encrypt``/``decrypt``, which
this provider does not use. So a recipient made through the engine opens under any context at
the service, and the envelope's header MAC is what refuses another context. These tests pin
down that truth; the conformance suite (test_engine_hands_the_context_to_the_kek) checks that
the engine still hands the context to this provider.
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.keyvault.keys import KeyVaultKey
from azure_kv_cloud import Cloud, uri_of

from kmsenvelope import AuthenticationError, DecryptionError
from kmsenvelope_azure.provider import AzureKeyVaultProvider

CONTEXT = {"app": "billing", "tenant": "t-1"}
OTHER = {"app": "billing", "tenant": "t-2"}


@pytest.mark.parametrize(
    ("key_fixture", "algorithm"), [("rsa_key", "RSA-OAEP-256"), ("oct_key", "A256KW")]
)
def test_service_does_not_bind_the_context_the_envelope_does(
    key_fixture: str, algorithm: str, request: pytest.FixtureRequest, cloud: Cloud, make_engine: Any
) -> None:
    key: KeyVaultKey = request.getfixturevalue(key_fixture)
    uri = uri_of(key)
    engine = make_engine()
    blob = engine.encrypt(b"context in the header", [uri], CONTEXT)
    (stanza,) = engine.inspect(blob).recipients
    assert stanza.algorithm == algorithm

    # The service unwraps the recipient whatever context is given: it has nowhere to bind it.
    opened = [
        AzureKeyVaultProvider()(stanza.key_id, cloud.settings()).unwrap(stanza, context)
        for context in (CONTEXT, {}, OTHER)
    ]
    assert len(opened[0]) == 32
    assert opened == [opened[0]] * 3

    # The envelope refuses another context, and a context rewritten inside its header.
    reader = make_engine(fresh=True, keys=(AzureKeyVaultProvider()(uri, cloud.settings()),))
    assert reader.decrypt(blob, CONTEXT) == b"context in the header"
    with pytest.raises(AuthenticationError):
        reader.decrypt(blob, OTHER)
    tampered = blob.replace(b"t-1", b"t-2", 1)
    assert tampered != blob
    with pytest.raises(DecryptionError):
        reader.decrypt(tampered)
