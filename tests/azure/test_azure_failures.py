"""Every failure path: each Azure answer becomes the right kmsenvelope error, quickly."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.keyvault.keys import KeyClient, KeyOperation, KeyVaultKey
from azure_kv_cloud import NO_GET, NO_UNWRAP, NO_WRAP, Cloud, MakeEngine, unique, uri_of
from azure_kv_emulator import closed_port

from kmsenvelope import (
    ConfigError,
    NoRecipientError,
    ProviderError,
    ProviderUnavailableError,
    WrappedKey,
)
from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDisabledError,
    KeyNotFoundError,
    ThrottledError,
    UnwrapError,
)
from kmsenvelope_azure.provider import AzureKeyVaultProvider

CONTEXT = {"purpose": "failures"}


@pytest.fixture(autouse=True)
def _no_leftover_faults(cloud: Cloud) -> Iterator[None]:
    yield
    cloud.vault.clear_faults()
    cloud.hsm.clear_faults()


def _wrapped(provider: AzureKeyVaultProvider, cloud: Cloud, key: KeyVaultKey) -> WrappedKey:
    return provider(uri_of(key), cloud.settings()).wrap(os.urandom(32), CONTEXT)


# -- disabled, expired, not yet valid ------------------------------------------------------------


def test_disabled_rsa_key(
    cloud: Cloud,
    vault_admin: KeyClient,
    rsa_key: KeyVaultKey,
    make_engine: MakeEngine,
    provider: AzureKeyVaultProvider,
) -> None:
    blob = make_engine().encrypt(b"written while enabled", [uri_of(rsa_key)], CONTEXT)
    vault_admin.update_key_properties(rsa_key.name, rsa_key.properties.version, enabled=False)

    # Unwrap: the service refuses (403 KeyDisabled) -> KeyDisabledError naming the key.
    recipient = make_engine().inspect(blob).recipients[0]
    with pytest.raises(KeyDisabledError, match=rf"{rsa_key.name}.*disabled"):
        provider(recipient.key_id, cloud.settings()).unwrap(recipient, CONTEXT)
    with pytest.raises(NoRecipientError) as info:
        make_engine(fresh=True).decrypt(blob, CONTEXT)
    assert "disabled" in info.value.attempts[0].reason

    # Wrap: Key Vault would still serve an RSA public-key wrap for a disabled key, but an
    # envelope nobody can open is useless: the provider refuses before calling the service.
    kek = provider(uri_of(rsa_key), cloud.settings(wrap_locally=False, key_cache_ttl=0))
    with pytest.raises(KeyDisabledError, match="disabled"):
        kek.wrap(os.urandom(32), CONTEXT)
    assert cloud.vault.count("wrapkey", rsa_key.name) == 0

    vault_admin.update_key_properties(rsa_key.name, rsa_key.properties.version, enabled=True)
    assert make_engine(fresh=True).decrypt(blob, CONTEXT) == b"written while enabled"
    assert kek.wrap(os.urandom(32), CONTEXT).key_id == f"azure-kv:{rsa_key.id}"


def test_disabled_oct_hsm_key(
    cloud: Cloud, hsm_admin: KeyClient, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    wrapped = _wrapped(provider, cloud, oct_key)
    hsm_admin.update_key_properties(oct_key.name, oct_key.properties.version, enabled=False)
    kek = provider(uri_of(oct_key), cloud.settings(key_cache_ttl=0))
    with pytest.raises(KeyDisabledError):
        kek.wrap(os.urandom(32), CONTEXT)
    with pytest.raises(KeyDisabledError, match="disabled"):
        kek.unwrap(wrapped, CONTEXT)


def test_a_cached_version_that_gets_disabled_is_looked_up_again(
    cloud: Cloud, hsm_admin: KeyClient, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    kek = provider(uri_of(oct_key), cloud.settings(key_cache_ttl=3600))
    kek.wrap(os.urandom(32), CONTEXT)
    rotated = hsm_admin.rotate_key(oct_key.name)
    hsm_admin.update_key_properties(oct_key.name, oct_key.properties.version, enabled=False)
    # The cached current version is stale and the service now refuses it (403 KeyDisabled):
    # the wrap looks the key up again and uses the new current version instead of failing.
    assert kek.wrap(os.urandom(32), CONTEXT).key_id == f"azure-kv:{rotated.id}"
    assert cloud.hsm.count("encrypt", oct_key.name, status=403) == 1


def test_expired_key_cannot_wrap_but_still_unwraps_old_envelopes(
    cloud: Cloud, vault_admin: KeyClient, rsa_key: KeyVaultKey, make_engine: MakeEngine
) -> None:
    blob = make_engine().encrypt(b"before expiry", [uri_of(rsa_key)], CONTEXT)
    expired = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    vault_admin.update_key_properties(rsa_key.name, rsa_key.properties.version, expires_on=expired)
    with pytest.raises(KeyDisabledError, match="expired"):
        make_engine(fresh=True, key_cache_ttl=0).encrypt(b"x", [uri_of(rsa_key)], CONTEXT)
    assert make_engine(fresh=True).decrypt(blob, CONTEXT) == b"before expiry"


def test_expiry_reported_by_the_service(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    # E.g. a clock behind the service's: the local check passed, the HSM says expired.
    body = {
        "error": {
            "code": "Forbidden",
            "message": "Operation encrypt is not allowed on an expired key.",
            "innererror": {"code": "KeyExpired"},
        }
    }
    cloud.hsm.inject(403, count=2, operations={"encrypt"}, key_name=oct_key.name, body=body)
    with pytest.raises(KeyDisabledError, match="expired"):
        provider(uri_of(oct_key), cloud.settings()).wrap(os.urandom(32), CONTEXT)


def test_key_not_yet_valid_cannot_wrap(
    cloud: Cloud, vault_admin: KeyClient, provider: AzureKeyVaultProvider
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    key = vault_admin.create_rsa_key(unique("nbf"), size=2048, not_before=later)
    with pytest.raises(KeyDisabledError, match="not valid before"):
        provider(uri_of(key), cloud.settings()).wrap(os.urandom(32), CONTEXT)


def test_key_whose_key_ops_forbid_wrapping(
    cloud: Cloud, vault_admin: KeyClient, provider: AzureKeyVaultProvider
) -> None:
    key = vault_admin.create_rsa_key(
        unique("signing"), size=2048, key_operations=[KeyOperation.sign, KeyOperation.verify]
    )
    with pytest.raises(ProviderError, match="does not allow wrapKey") as info:
        provider(uri_of(key), cloud.settings()).wrap(os.urandom(32), CONTEXT)
    assert not isinstance(info.value, AccessDeniedError | KeyDisabledError)


# -- permissions -----------------------------------------------------------------------------------


def test_missing_unwrap_permission(
    cloud: Cloud, rsa_key: KeyVaultKey, make_engine: MakeEngine, provider: AzureKeyVaultProvider
) -> None:
    # get + wrapKey are enough to encrypt (RSA wraps locally with the public key) ...
    blob = make_engine(client_id=NO_UNWRAP).encrypt(b"secret", [uri_of(rsa_key)], CONTEXT)
    recipient = make_engine().inspect(blob).recipients[0]
    # ... but not to decrypt: the error names the key, the permission and the role to grant.
    kek = provider(recipient.key_id, cloud.settings(client_id=NO_UNWRAP))
    with pytest.raises(AccessDeniedError) as info:
        kek.unwrap(recipient, CONTEXT)
    message = str(info.value)
    assert rsa_key.name in message
    assert "'unwrapKey'" in message
    assert "Key Vault Crypto" in message
    assert "ForbiddenByRbac" in message
    with pytest.raises(NoRecipientError, match="unwrapKey"):
        make_engine(fresh=True, client_id=NO_UNWRAP).decrypt(blob, CONTEXT)


def test_missing_get_permission(
    cloud: Cloud, rsa_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    kek = provider(uri_of(rsa_key), cloud.settings(client_id=NO_GET))
    with pytest.raises(AccessDeniedError, match="'get'"):
        kek.wrap(os.urandom(32), CONTEXT)
    # Unwrapping needs only unwrapKey: no get, so this identity can still decrypt.
    wrapped = _wrapped(provider, cloud, rsa_key)
    assert len(provider(wrapped.key_id, cloud.settings(client_id=NO_GET)).unwrap(wrapped, {})) == 32


def test_missing_wrap_permission_for_an_hsm_key(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    kek = provider(uri_of(oct_key), cloud.settings(client_id=NO_WRAP))
    with pytest.raises(AccessDeniedError, match="'encrypt'") as info:
        kek.wrap(os.urandom(32), CONTEXT)
    assert oct_key.name in str(info.value)


def test_wrong_client_secret(cloud: Cloud, rsa_key: KeyVaultKey) -> None:
    kek = AzureKeyVaultProvider()(uri_of(rsa_key), cloud.settings(client_secret="not-it"))
    with pytest.raises(AccessDeniedError, match="AADSTS7000215"):
        kek.wrap(os.urandom(32), CONTEXT)


# -- missing keys ----------------------------------------------------------------------------------


def test_missing_key_and_missing_version(
    cloud: Cloud, rsa_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    missing = unique("missing")
    with pytest.raises(KeyNotFoundError, match=missing):
        provider(f"azure-kv:{cloud.vault.url}/keys/{missing}", cloud.settings()).wrap(
            os.urandom(32), CONTEXT
        )
    wrapped = _wrapped(provider, cloud, rsa_key)
    ghost_id = f"azure-kv:{cloud.vault.url}/keys/{rsa_key.name}/{'0' * 32}"
    ghost = WrappedKey("azure-kv", ghost_id, wrapped.algorithm, wrapped.ciphertext)
    with pytest.raises(KeyNotFoundError, match="0" * 32):
        provider(ghost_id, cloud.settings()).unwrap(ghost, CONTEXT)


def test_tampered_wrapped_key_is_an_unwrap_error(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    wrapped = _wrapped(provider, cloud, oct_key)
    bad = WrappedKey(
        wrapped.provider,
        wrapped.key_id,
        wrapped.algorithm,
        bytes([wrapped.ciphertext[0] ^ 1]) + wrapped.ciphertext[1:],
        wrapped.params,
    )
    with pytest.raises(UnwrapError, match="refused to decrypt"):
        provider(wrapped.key_id, cloud.settings()).unwrap(bad, CONTEXT)


# -- throttling and service errors -----------------------------------------------------------------


def test_throttled_then_success_honours_retry_after(
    cloud: Cloud, rsa_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    wrapped = _wrapped(provider, cloud, rsa_key)
    cloud.vault.inject(
        429, count=1, operations={"unwrapkey"}, key_name=rsa_key.name, retry_after="1"
    )
    started = time.monotonic()
    dek = provider(wrapped.key_id, cloud.settings()).unwrap(wrapped, CONTEXT)
    elapsed = time.monotonic() - started
    assert len(dek) == 32
    assert 0.9 <= elapsed < 5  # waited the Retry-After second, then succeeded
    assert cloud.vault.count("unwrapkey", rsa_key.name, status=429) == 1
    assert cloud.vault.count("unwrapkey", rsa_key.name, status=200) == 1


def test_throttled_beyond_the_bounded_retries(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    cloud.hsm.inject(429, count=100, operations={"encrypt"}, key_name=oct_key.name, retry_after="0")
    kek = provider(uri_of(oct_key), cloud.settings(retry_total=2))
    started = time.monotonic()
    with pytest.raises(ThrottledError, match="throttled") as info:
        kek.wrap(os.urandom(32), CONTEXT)
    assert time.monotonic() - started < 5
    assert isinstance(info.value, ProviderUnavailableError)
    assert "Throttled" in str(info.value)
    assert cloud.hsm.count("encrypt", oct_key.name, status=429) == 3  # 1 try + 2 retries


def test_a_huge_retry_after_is_capped(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    cloud.hsm.inject(
        429, count=100, operations={"encrypt"}, key_name=oct_key.name, retry_after="3600"
    )
    kek = provider(uri_of(oct_key), cloud.settings(retry_total=1, retry_backoff_max=0.2))
    started = time.monotonic()
    with pytest.raises(ThrottledError):
        kek.wrap(os.urandom(32), CONTEXT)
    assert time.monotonic() - started < 3
    assert cloud.hsm.count("encrypt", oct_key.name, status=429) == 2


def test_service_errors_are_retried_then_succeed(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    wrapped = _wrapped(provider, cloud, oct_key)
    cloud.hsm.inject(503, count=2, operations={"decrypt"}, key_name=oct_key.name)
    assert len(provider(wrapped.key_id, cloud.settings()).unwrap(wrapped, CONTEXT)) == 32
    assert cloud.hsm.count("decrypt", oct_key.name, status=503) == 2


def test_non_azure_error_body_from_a_proxy(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    cloud.hsm.inject(
        502, count=100, operations={"encrypt"}, key_name=oct_key.name, body="upstream connect error"
    )
    kek = provider(uri_of(oct_key), cloud.settings(retry_total=1))
    with pytest.raises(ProviderUnavailableError, match="502"):
        kek.wrap(os.urandom(32), CONTEXT)


def test_service_errors_beyond_the_retries(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    wrapped = _wrapped(provider, cloud, oct_key)
    cloud.hsm.inject(503, count=100, operations={"decrypt"}, key_name=oct_key.name)
    kek = provider(wrapped.key_id, cloud.settings(retry_total=1))
    with pytest.raises(ProviderUnavailableError, match="503") as info:
        kek.unwrap(wrapped, CONTEXT)
    assert not isinstance(info.value, ThrottledError)


# -- unreachable, TLS and authentication endpoints -----------------------------------------------


def test_unreachable_vault_fails_fast(cloud: Cloud, provider: AzureKeyVaultProvider) -> None:
    uri = f"azure-kv:https://127.0.0.1:{closed_port()}/keys/k"
    kek = provider(uri, cloud.settings(retry_backoff_factor=0.5))  # the default backoff
    started = time.monotonic()
    with pytest.raises(ProviderUnavailableError, match="unreachable") as info:
        kek.wrap(os.urandom(32), CONTEXT)
    assert not isinstance(info.value, ThrottledError)
    wrapped = WrappedKey("azure-kv", f"{uri}/{'a' * 32}", "RSA-OAEP-256", b"\x00" * 256)
    with pytest.raises(ProviderUnavailableError, match="unreachable"):
        kek.unwrap(wrapped, CONTEXT)
    assert time.monotonic() - started < 6


def test_unreachable_identity_endpoint(cloud: Cloud, rsa_key: KeyVaultKey) -> None:
    settings = cloud.settings(authority_host=f"https://127.0.0.1:{closed_port()}")
    with pytest.raises(ProviderUnavailableError, match="identity endpoint"):
        AzureKeyVaultProvider()(uri_of(rsa_key), settings).wrap(os.urandom(32), CONTEXT)


def test_untrusted_tls_certificate(cloud: Cloud) -> None:
    vault = cloud.start_vault()  # a vault this process has never talked to
    try:
        key = cloud.admin(vault).create_rsa_key(unique("tls"), size=2048)
        kek = AzureKeyVaultProvider()(uri_of(key), cloud.settings(ca_bundle=None))
        with pytest.raises(ProviderUnavailableError, match="ca_bundle"):
            kek.wrap(os.urandom(32), CONTEXT)
    finally:
        vault.stop()


def test_challenge_resource_is_verified_by_default(cloud: Cloud) -> None:
    vault = cloud.start_vault()
    try:
        key = cloud.admin(vault).create_rsa_key(unique("challenge"), size=2048)
        # The emulator's challenge names resource vault.azure.net, but it is served from
        # 127.0.0.1: exactly what the check exists to catch (a host posing as Key Vault).
        kek = AzureKeyVaultProvider()(uri_of(key), cloud.settings(verify_challenge_resource=None))
        with pytest.raises(ProviderError, match="does not match") as info:
            kek.wrap(os.urandom(32), CONTEXT)
        assert not isinstance(info.value, ProviderUnavailableError)
        assert not any(c.client_id == "app-wrapper" for c in vault.calls)  # no token was sent
    finally:
        vault.stop()


# -- algorithms ------------------------------------------------------------------------------------


def test_rsa1_5_only_when_explicitly_allowed(
    cloud: Cloud, rsa_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    with pytest.raises(ConfigError, match="allow_rsa1_5"):
        provider(uri_of(rsa_key), cloud.settings(algorithm="RSA1_5"))
    legacy = provider(uri_of(rsa_key), cloud.settings(algorithm="RSA1_5", allow_rsa1_5=True))
    wrapped = legacy.wrap(os.urandom(32), CONTEXT)
    assert wrapped.algorithm == "RSA1_5"
    assert len(legacy.unwrap(wrapped, CONTEXT)) == 32
    calls = cloud.vault.count("unwrapkey", rsa_key.name)
    with pytest.raises(ProviderError, match="allow_rsa1_5"):
        provider(wrapped.key_id, cloud.settings()).unwrap(wrapped, CONTEXT)
    assert cloud.vault.count("unwrapkey", rsa_key.name) == calls


def test_unknown_recorded_algorithm_is_refused(
    cloud: Cloud, rsa_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    wrapped = _wrapped(provider, cloud, rsa_key)
    odd = WrappedKey(wrapped.provider, wrapped.key_id, "ECDH-ES", wrapped.ciphertext)
    with pytest.raises(UnwrapError, match="unsupported wrap algorithm"):
        provider(wrapped.key_id, cloud.settings()).unwrap(odd, CONTEXT)


def test_key_type_that_cannot_wrap(
    cloud: Cloud, vault_admin: KeyClient, provider: AzureKeyVaultProvider
) -> None:
    key = vault_admin.create_ec_key(unique("ec"), curve="P-256")
    with pytest.raises(ProviderError, match="EC key cannot wrap data keys"):
        provider(uri_of(key), cloud.settings()).wrap(os.urandom(32), CONTEXT)


def test_algorithm_the_key_rejects(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    # A128KW with a 256-bit key: the service answers 400, a plain ProviderError on wrap.
    kek = provider(uri_of(oct_key), cloud.settings(oct_algorithm="A128KW"))
    with pytest.raises(ProviderError, match="BadParameter") as info:
        kek.wrap(os.urandom(32), CONTEXT)
    assert not isinstance(info.value, UnwrapError | ProviderUnavailableError)


# -- odd answers -----------------------------------------------------------------------------------


def test_vault_rejecting_the_token(
    cloud: Cloud, rsa_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    wrapped = _wrapped(provider, cloud, rsa_key)
    cloud.vault.inject(
        401, count=1, operations={"unwrapkey"}, key_name=rsa_key.name, code="Unauthorized"
    )
    with pytest.raises(AccessDeniedError, match="rejected the credential's token"):
        provider(wrapped.key_id, cloud.settings()).unwrap(wrapped, CONTEXT)


def test_malformed_service_response(
    cloud: Cloud, oct_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    wrapped = _wrapped(provider, cloud, oct_key)
    cloud.hsm.inject(
        200, count=1, operations={"decrypt"}, key_name=oct_key.name, body={"kid": wrapped.key_id}
    )
    with pytest.raises(ProviderError, match="malformed response"):
        provider(wrapped.key_id, cloud.settings()).unwrap(wrapped, CONTEXT)


def test_vault_in_another_tenant_needs_additionally_allowed_tenants(
    cloud: Cloud, rsa_key: KeyVaultKey
) -> None:
    # The identity's home tenant differs from the tenant the vault's challenge names.
    home = "11111111-2222-3333-4444-555555555555"
    settings = cloud.settings(tenant_id=home)
    with pytest.raises(AccessDeniedError, match="additionally_allowed_tenants"):
        AzureKeyVaultProvider()(uri_of(rsa_key), settings).wrap(os.urandom(32), CONTEXT)
    allowed = {**settings, "additionally_allowed_tenants": ["*"]}
    wrapped = AzureKeyVaultProvider()(uri_of(rsa_key), allowed).wrap(os.urandom(32), CONTEXT)
    assert wrapped.key_id == f"azure-kv:{rsa_key.id}"


def test_unreadable_certificate_is_a_config_error(cloud: Cloud, tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-cert.pem"
    garbage.write_text("this is not a certificate")
    settings = cloud.common(
        credential="certificate", tenant_id="t", client_id="c", certificate_path=str(garbage)
    )
    with pytest.raises(ConfigError, match="certificate"):
        AzureKeyVaultProvider()(f"azure-kv:{cloud.vault.url}/keys/k", settings)


def test_api_version(cloud: Cloud, rsa_key: KeyVaultKey) -> None:
    kek = AzureKeyVaultProvider()(uri_of(rsa_key), cloud.settings(api_version="7.4"))
    assert len(kek.unwrap(kek.wrap(os.urandom(32), CONTEXT), CONTEXT)) == 32
    with pytest.raises(ConfigError, match="api_version"):
        AzureKeyVaultProvider()(uri_of(rsa_key), cloud.settings(api_version="1999-01-01"))
