"""A256GCM for oct-HSM keys: the stanza layout, the SDK's own view of it, old key-wrap envelopes,
the A256KW fallback, and what an identity or key without encrypt/decrypt gets told."""

from __future__ import annotations

import os

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient, KeyOperation, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm
from azure_hsm_roles import (
    CRYPTO_USER,
    ENCRYPT_ONLY,
    SERVICE_ENCRYPTION_USER,
    role_engine,
    role_settings,
)
from azure_kv_cloud import ADMIN, SECRETS, TENANT, Cloud, unique, uri_of
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsenvelope import ProviderError, WrappedKey
from kmsenvelope.errors import AccessDeniedError, UnwrapError
from kmsenvelope_azure.algorithms import context_aad
from kmsenvelope_azure.provider import AzureKeyVaultProvider
from kmsenvelope_azure.settings import parse_settings

CONTEXT = {"app": "billing", "tenant": "t-1"}


@pytest.fixture
def gcm_key(hsm_admin: KeyClient) -> KeyVaultKey:
    return hsm_admin.create_oct_key(unique("gcm"), size=256, hardware_protected=True)


def _crypto_client(cloud: Cloud, key: KeyVaultKey) -> CryptographyClient:
    """The SDK's own CryptographyClient for ``key`` (the admin identity), remote only."""
    credential = ClientSecretCredential(
        TENANT,
        ADMIN,
        SECRETS[ADMIN],
        authority=cloud.authority.url,
        disable_instance_discovery=True,
        connection_verify=str(cloud.tls.ca),
    )
    return CryptographyClient(
        key.id, credential, verify_challenge_resource=False, connection_verify=str(cloud.tls.ca)
    )


def test_a256gcm_is_the_default_for_oct_keys_and_a256kw_can_be_chosen() -> None:
    assert parse_settings({}, env={}).oct_algorithm == "A256GCM"
    assert parse_settings({"oct_algorithm": "a256kw"}, env={}).oct_algorithm == "A256KW"


def test_stanza_is_iv_ciphertext_tag_under_the_documented_aad(
    cloud: Cloud, gcm_key: KeyVaultKey
) -> None:
    kek = AzureKeyVaultProvider()(uri_of(gcm_key), role_settings(cloud, CRYPTO_USER))
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, CONTEXT)
    assert wrapped.key_id == f"azure-kv:{gcm_key.id}"
    assert (wrapped.algorithm, dict(wrapped.params)) == ("A256GCM", {"aad": "context-v1"})
    assert len(wrapped.ciphertext) == 12 + 32 + 16
    label = b"kmsenvelope-azure-kv/v1\x00"
    entries = b"\x00\x02" + b"\x00\x03app\x00\x07billing" + b"\x00\x06tenant\x00\x03t-1"
    assert context_aad(CONTEXT) == label + entries  # label, then docs/format.md section 5.4
    # Whoever holds the HSM's key can open it with plain AES-GCM and the documented AAD.
    secret = cloud.hsm.latest(gcm_key.name).secret
    assert secret is not None
    iv, rest = wrapped.ciphertext[:12], wrapped.ciphertext[12:]
    assert AESGCM(secret).decrypt(iv, rest, context_aad(CONTEXT)) == dek
    assert cloud.hsm.count("wrapkey", gcm_key.name) == 0  # encrypt, not wrapKey


def test_the_sdks_cryptography_client_reads_and_writes_the_same_stanza(
    cloud: Cloud, gcm_key: KeyVaultKey
) -> None:
    """The provider's REST calls carry what the SDK's CryptographyClient sends and reads."""
    kek = AzureKeyVaultProvider()(uri_of(gcm_key), role_settings(cloud, CRYPTO_USER))
    client = _crypto_client(cloud, gcm_key)
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, CONTEXT)
    blob = wrapped.ciphertext
    opened = client.decrypt(
        EncryptionAlgorithm.a256_gcm,
        blob[12:-16],
        iv=blob[:12],
        authentication_tag=blob[-16:],
        additional_authenticated_data=context_aad(CONTEXT),
    )
    assert opened.plaintext == dek

    sealed = client.encrypt(
        EncryptionAlgorithm.a256_gcm, dek, additional_authenticated_data=context_aad(CONTEXT)
    )
    assert sealed.iv is not None
    assert sealed.tag is not None
    made = WrappedKey(
        "azure-kv",
        wrapped.key_id,
        "A256GCM",
        sealed.iv + sealed.ciphertext + sealed.tag,
        {"aad": "context-v1"},
    )
    assert kek.unwrap(made, CONTEXT) == dek
    with pytest.raises(UnwrapError):
        kek.unwrap(made, {})


def test_envelopes_wrapped_with_key_wrap_still_open(cloud: Cloud, gcm_key: KeyVaultKey) -> None:
    """Envelopes written before A256GCM became the default (or with the fallback) open with
    the default settings: the stanza's algorithm decides, through unwrapKey."""
    uri = uri_of(gcm_key)
    reader = role_engine(role_settings(cloud, CRYPTO_USER), fresh=True)
    for n, algorithm in enumerate(("A256KW", "CKM_AES_KEY_WRAP_PAD"), start=1):
        writer = role_engine(role_settings(cloud, CRYPTO_USER, oct_algorithm=algorithm))
        blob = writer.encrypt(b"older envelope", [uri], CONTEXT)
        (stanza,) = writer.inspect(blob).recipients
        assert stanza.algorithm == algorithm
        assert reader.decrypt(blob, CONTEXT) == b"older envelope"
        assert cloud.hsm.count("unwrapkey", gcm_key.name, status=200) == n
    assert cloud.hsm.count("encrypt", gcm_key.name) == 0
    assert cloud.hsm.count("decrypt", gcm_key.name) == 0


def test_the_key_wrap_fallback_needs_only_wrap_and_unwrap(
    cloud: Cloud, gcm_key: KeyVaultKey
) -> None:
    """'Managed HSM Crypto Service Encryption User' (no encrypt/decrypt) with A256KW."""
    settings = role_settings(cloud, SERVICE_ENCRYPTION_USER, oct_algorithm="A256KW")
    blob = role_engine(settings).encrypt(b"fallback", [uri_of(gcm_key)], CONTEXT)
    assert role_engine(settings, fresh=True).decrypt(blob, CONTEXT) == b"fallback"
    assert cloud.hsm.count("wrapkey", gcm_key.name, status=200) == 1
    assert cloud.hsm.count("encrypt", gcm_key.name) == 0


def test_an_identity_without_encrypt_is_told_what_to_grant(
    cloud: Cloud, gcm_key: KeyVaultKey
) -> None:
    kek = AzureKeyVaultProvider()(uri_of(gcm_key), role_settings(cloud, SERVICE_ENCRYPTION_USER))
    with pytest.raises(AccessDeniedError) as info:
        kek.wrap(os.urandom(32), CONTEXT)
    message = str(info.value)
    assert "encrypt denied" in message
    assert "Managed HSM Crypto User" in message
    assert 'oct_algorithm = "A256KW"' in message
    assert cloud.hsm.count("encrypt", gcm_key.name, status=403) == 1


def test_an_identity_without_decrypt_cannot_unwrap(cloud: Cloud, gcm_key: KeyVaultKey) -> None:
    wrapped = AzureKeyVaultProvider()(uri_of(gcm_key), role_settings(cloud, ENCRYPT_ONLY)).wrap(
        os.urandom(32), CONTEXT
    )
    reader = AzureKeyVaultProvider()(wrapped.key_id, role_settings(cloud, SERVICE_ENCRYPTION_USER))
    with pytest.raises(AccessDeniedError, match=r"decrypt denied.*Managed HSM Crypto User"):
        reader.unwrap(wrapped, CONTEXT)


def test_a_key_that_does_not_allow_encrypt_is_refused_before_any_call(
    cloud: Cloud, hsm_admin: KeyClient
) -> None:
    key = hsm_admin.create_oct_key(
        unique("wrap-only"),
        size=256,
        hardware_protected=True,
        key_operations=[KeyOperation.wrap_key, KeyOperation.unwrap_key],
    )
    kek = AzureKeyVaultProvider()(uri_of(key), role_settings(cloud, CRYPTO_USER))
    with pytest.raises(ProviderError, match=r'does not allow encrypt.*oct_algorithm = "A256KW"'):
        kek.wrap(os.urandom(32), CONTEXT)
    assert cloud.hsm.count("encrypt", key.name) == 0
    fallback = AzureKeyVaultProvider()(
        uri_of(key), role_settings(cloud, CRYPTO_USER, oct_algorithm="A256KW")
    )
    dek = os.urandom(32)
    assert fallback.unwrap(fallback.wrap(dek, CONTEXT), CONTEXT) == dek


@pytest.mark.parametrize(
    ("params", "ciphertext"),
    [
        ({"aad": "context-v2"}, bytes(60)),  # an AAD construction this provider does not know
        ({}, bytes(60)),  # none named
        ({"aad": "context-v1"}, bytes(28)),  # no room for a data key between IV and tag
    ],
)
def test_malformed_gcm_stanzas_are_refused_without_calling_the_hsm(
    cloud: Cloud, gcm_key: KeyVaultKey, params: dict[str, str], ciphertext: bytes
) -> None:
    kek = AzureKeyVaultProvider()(uri_of(gcm_key), role_settings(cloud, CRYPTO_USER))
    stanza = WrappedKey("azure-kv", f"azure-kv:{gcm_key.id}", "A256GCM", ciphertext, params)
    with pytest.raises(UnwrapError):
        kek.unwrap(stanza, CONTEXT)
    assert cloud.hsm.count("decrypt", gcm_key.name) == 0
