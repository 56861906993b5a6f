"""Key URIs and settings validation: mistakes become ConfigError before any network call."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmsenvelope import Config, ConfigError
from kmsenvelope_azure.errors import permission_hint
from kmsenvelope_azure.provider import AzureKeyVaultProvider
from kmsenvelope_azure.settings import SETTINGS_SCHEMA, AzureSettings, parse_settings
from kmsenvelope_azure.uri import KeyUri, parse_key_uri

VERSION = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "azure-kv:https://myvault.vault.azure.net/keys/payments",
            KeyUri("https://myvault.vault.azure.net", "payments"),
        ),
        (
            f"azure-kv:https://MyVault.Vault.Azure.NET/keys/payments/{VERSION}/",
            KeyUri("https://myvault.vault.azure.net", "payments", VERSION),
        ),
        (
            "azure-kv:https://pool.managedhsm.azure.net:443/keys/k-1",
            KeyUri("https://pool.managedhsm.azure.net", "k-1"),
        ),
        (
            "azure-kv:https://127.0.0.1:8443/keys/k/v2",
            KeyUri("https://127.0.0.1:8443", "k", "v2"),
        ),
        (
            "azure-kv:https://myvault.vault.usgovcloudapi.net/keys/k",
            KeyUri("https://myvault.vault.usgovcloudapi.net", "k"),
        ),
        ("azure-kv:https://[::1]:8443/keys/k", KeyUri("https://[::1]:8443", "k")),
    ],
)
def test_valid_key_uris(uri: str, expected: KeyUri) -> None:
    parsed = parse_key_uri(uri)
    assert parsed == expected
    assert parse_key_uri(parsed.uri) == parsed  # the canonical form round-trips


def test_managed_hsm_is_recognised() -> None:
    assert parse_key_uri("azure-kv:https://pool.managedhsm.azure.net/keys/k").is_managed_hsm
    assert not parse_key_uri("azure-kv:https://v.vault.azure.net/keys/k").is_managed_hsm


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("aws-kms:https://v.vault.azure.net/keys/k", "scheme"),
        ("azure-kv:http://v.vault.azure.net/keys/k", "https"),
        ("azure-kv:https://v.vault.azure.net/secrets/k", "path"),
        ("azure-kv:https://v.vault.azure.net/keys", "path"),
        ("azure-kv:https://v.vault.azure.net/keys/k/v/extra", "path"),
        ("azure-kv:https://v.vault.azure.net/keys/bad_name", "key name"),
        ("azure-kv:https://v.vault.azure.net/keys/k/ver-sion", "version"),
        ("azure-kv:https://v.vault.azure.net/keys/k?api-version=7.4", "query"),
        ("azure-kv:https://user:pw@v.vault.azure.net/keys/k", "user information"),
        ("azure-kv:https:///keys/k", "host"),
        ("azure-kv:https://v.vault.azure.net:99999/keys/k", "Port out of range"),
        ("azure-kv:v.vault.azure.net/keys/k", "https"),
    ],
)
def test_malformed_key_uris(uri: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_key_uri(uri)
    with pytest.raises(ConfigError):
        AzureKeyVaultProvider()(uri, {})  # the factory refuses it before any network call


def test_defaults() -> None:
    settings = parse_settings({}, env={})
    assert settings.credential == "default"
    assert settings.algorithm == "RSA-OAEP-256"
    assert settings.oct_algorithm == "A256GCM"
    assert settings.verify_challenge_resource is True
    assert settings.wrap_locally is True
    assert settings.retry_total == 4
    assert 0 < settings.key_cache_ttl <= 60


def test_strings_from_environment_variables_are_parsed() -> None:
    settings = parse_settings(
        {
            "disable_instance_discovery": "true",
            "verify_challenge_resource": "0",
            "key_cache_ttl": "2.5",
            "retry_total": "3",
            "additionally_allowed_tenants": "t1, t2",
        },
        env={},
    )
    assert settings.disable_instance_discovery is True
    assert settings.verify_challenge_resource is False
    assert settings.key_cache_ttl == 2.5
    assert settings.retry_total == 3
    assert settings.additionally_allowed_tenants == ("t1", "t2")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"vault": "x"}, "unknown setting"),
        ({"credential": "password"}, "must be one of"),
        ({"client_secret": "s"}, "client-secret"),  # set, but credential is 'default'
        ({"credential": "managed-identity", "authority_host": "login.x"}, "not used"),
        ({"credential": "client-secret", "client_id": "c", "client_secret": "s"}, "tenant_id"),
        ({"credential": "client-secret", "tenant_id": "t", "client_id": "c"}, "client_secret"),
        ({"credential": "certificate", "tenant_id": "t", "client_id": "c"}, "certificate_path"),
        ({"credential": "workload-identity", "tenant_id": "t", "client_id": "c"}, "token_file"),
        ({"disable_instance_discovery": "maybe"}, "true or false"),
        ({"key_cache_ttl": -1}, "number of at least 0"),
        ({"key_cache_ttl": "soon"}, "number"),
        ({"retry_total": 100}, "whole number from 0 to 20"),
        ({"retry_total": True}, "whole number"),
        ({"retry_total": 2.5}, "whole number"),
        ({"retry_total": "many"}, "whole number"),
        ({"key_cache_ttl": True}, "number"),
        ({"additionally_allowed_tenants": 5}, "list of strings"),
        ({"algorithm": "A256KW"}, "oct_algorithm"),
        ({"algorithm": "RSA-PSS"}, "unsupported RSA"),
        ({"algorithm": "RSA1_5"}, "allow_rsa1_5"),
        ({"oct_algorithm": "AES-GCM"}, "unsupported symmetric"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "not a readable file"),
        ({"authority_host": "http://login.example"}, "https"),
        ({"tenant_id": 5, "credential": "client-secret"}, "non-empty string"),
    ],
)
def test_invalid_settings(raw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_settings(raw, env={})
    assert "[providers.azure-kv]" in str(info.value)


def test_required_identity_values_may_come_from_azure_variables(tmp_path: Path) -> None:
    env = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s"}
    settings = parse_settings({"credential": "client-secret"}, env=env)
    assert (settings.tenant_id, settings.client_id, settings.client_secret) == ("t", "c", "s")


def test_rsa1_5_needs_explicit_permission() -> None:
    settings = parse_settings({"algorithm": "rsa1_5", "allow_rsa1_5": True}, env={})
    assert settings.algorithm == "RSA1_5"


def test_secrets_stay_out_of_reprs_and_redacted_config() -> None:
    settings = parse_settings(
        {
            "credential": "client-secret",
            "tenant_id": "t",
            "client_id": "c",
            "client_secret": "hunter2-secret-value",
        },
        env={},
    )
    assert "hunter2" not in repr(settings)
    assert isinstance(settings, AzureSettings)
    table = {
        "client_secret": "hunter2",
        "certificate_password": "pw",
        "client_id": "c",
        "connection_string": "Endpoint=sb://x;SharedAccessKey=k",  # undeclared: never shown
    }
    config = Config(providers={"azure-kv": table})
    redacted = config.redacted({"azure-kv": SETTINGS_SCHEMA})["providers"]["azure-kv"]
    assert redacted == {
        "client_secret": "***",
        "certificate_password": "***",
        "client_id": "c",
        "connection_string": "***",
    }
    # Without the provider's schema (not installed), nothing of its table is shown.
    assert set(config.redacted()["providers"]["azure-kv"].values()) == {"***"}


def test_permission_hints_name_the_right_roles() -> None:
    vault = parse_key_uri("azure-kv:https://v.vault.azure.net/keys/k")
    hsm = parse_key_uri("azure-kv:https://pool.managedhsm.azure.net/keys/k")
    assert "Key Vault Crypto Service Encryption User" in permission_hint(vault, "unwrapKey")
    assert "grant the key permission unwrapKey" in permission_hint(vault, "unwrapKey")
    assert "Managed HSM Crypto Service Encryption User" in permission_hint(hsm, "wrapKey")
    assert "/keys/k" in permission_hint(hsm, "wrapKey")


def test_opening_a_key_makes_no_network_call() -> None:
    # Nothing listens on this host; opening (not using) the key must still succeed.
    kek = AzureKeyVaultProvider()("azure-kv:https://no-such-vault.invalid/keys/k", {})
    assert kek.key_id == "azure-kv:https://no-such-vault.invalid/keys/k"
    assert repr(kek) == "AzureKeyVaultKEK('azure-kv:https://no-such-vault.invalid/keys/k')"
