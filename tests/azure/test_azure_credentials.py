"""Each credential choice, as real azure-identity credentials against the emulated authority."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from azure.keyvault.keys import KeyVaultKey
from azure_kv_cloud import SECRETS, TENANT, WRAPPER, Cloud, unique, uri_of
from azure_kv_emulator import Client, make_client_certificate

import kmsenvelope
import kmsenvelope_azure.plugin
from kmsenvelope import ProviderRegistry, load_config
from kmsenvelope.errors import AccessDeniedError
from kmsenvelope_azure.provider import AzureKeyVaultProvider

CRYPTO_USER = {"get", "wrapKey", "unwrapKey", "encrypt", "decrypt"}


def _round_trip(cloud: Cloud, key: KeyVaultKey, settings: dict[str, object]) -> None:
    wrapped = AzureKeyVaultProvider()(uri_of(key), settings).wrap(os.urandom(32), {})
    fresh = AzureKeyVaultProvider()(wrapped.key_id, settings)
    assert len(fresh.unwrap(wrapped, {})) == 32


def _token_requests(cloud: Cloud) -> int:
    return sum(1 for method, path in cloud.authority.requests if path.endswith("/token"))


def test_certificate_credential(cloud: Cloud, oct_key: KeyVaultKey) -> None:
    client_id = unique("app-cert")
    path, public_key = make_client_certificate(cloud.tmp, client_id)
    cloud.authority.add_client(Client(client_id, certificate_key=public_key))
    cloud.hsm.grant(client_id, CRYPTO_USER)
    settings = cloud.common(
        credential="certificate",
        tenant_id=TENANT,
        client_id=client_id,
        certificate_path=str(path),
    )
    before = _token_requests(cloud)
    _round_trip(cloud, oct_key, settings)  # the emulator verified the signed client assertion
    assert _token_requests(cloud) > before

    # A certificate the directory does not know is refused by the authority.
    impostor, _ = make_client_certificate(cloud.tmp, unique("impostor"))
    wrong = {**settings, "certificate_path": str(impostor)}
    with pytest.raises(AccessDeniedError, match="signature"):
        AzureKeyVaultProvider()(uri_of(oct_key), wrong).wrap(os.urandom(32), {})


def test_workload_identity_credential(cloud: Cloud, rsa_key: KeyVaultKey, tmp_path: Path) -> None:
    client_id = unique("app-workload")
    federated = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln"
    cloud.authority.add_client(Client(client_id, federated_token=federated))
    cloud.vault.grant(client_id, CRYPTO_USER)
    token_file = tmp_path / "token"
    token_file.write_text(federated)
    settings = cloud.common(
        credential="workload-identity",
        tenant_id=TENANT,
        client_id=client_id,
        token_file_path=str(token_file),
    )
    _round_trip(cloud, rsa_key, settings)

    other = tmp_path / "other-token"
    other.write_text("not-the-federated-token")
    with pytest.raises(AccessDeniedError, match="Federated token"):
        AzureKeyVaultProvider()(uri_of(rsa_key), {**settings, "token_file_path": str(other)}).wrap(
            os.urandom(32), {}
        )


def test_managed_identity_credential(
    cloud: Cloud, rsa_key: KeyVaultKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The App Service flavour of managed identity: a local endpoint plus a secret header. (With
    # neither variable set, ManagedIdentityCredential would go to IMDS, which tests never do.)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{cloud.authority.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", cloud.authority.identity_header)
    cloud.vault.grant(cloud.authority.managed_identity_client, CRYPTO_USER)
    settings = cloud.common(entra=False, credential="managed-identity")
    _round_trip(cloud, rsa_key, settings)
    assert any(path == "/msi/token" for _, path in cloud.authority.requests)


def test_default_credential_from_the_standard_environment_variables(
    cloud: Cloud, rsa_key: KeyVaultKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", WRAPPER)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", SECRETS[WRAPPER])
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", cloud.authority.url)
    # Keep DefaultAzureCredential's chain to the environment credential: no developer tools,
    # no managed-identity probe.
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    settings = cloud.common(disable_instance_discovery=True)
    settings.pop("authority_host")  # from AZURE_AUTHORITY_HOST
    assert "credential" not in settings  # 'default' is the default
    _round_trip(cloud, rsa_key, settings)


def test_settings_from_a_config_file_and_environment_variables(
    cloud: Cloud, oct_key: KeyVaultKey, tmp_path: Path
) -> None:
    config_file = tmp_path / "kmsenvelope.toml"
    config_file.write_text(
        f"""
recipients = ["{uri_of(oct_key)}"]

[providers.azure-kv]
credential = "client-secret"
tenant_id = "{TENANT}"
client_id = "{WRAPPER}"
authority_host = "{cloud.authority.url}"
ca_bundle = "{cloud.tls.ca}"
oct_algorithm = "CKM_AES_KEY_WRAP_PAD"
""",
        encoding="utf-8",
    )
    prefix = "KMSENVELOPE_PROVIDERS__AZURE_KV__"
    env = {  # environment values are strings: booleans and numbers are parsed from them
        f"{prefix}CLIENT_SECRET": SECRETS[WRAPPER],
        f"{prefix}DISABLE_INSTANCE_DISCOVERY": "true",
        f"{prefix}VERIFY_CHALLENGE_RESOURCE": "false",
        f"{prefix}KEY_CACHE_TTL": "0",
        f"{prefix}RETRY_TOTAL": "2",
    }
    config = load_config(config_file, env=env)
    assert config.redacted()["providers"]["azure-kv"]["client_secret"] == "***"
    registry = ProviderRegistry()
    registry.add_plugin(kmsenvelope_azure.plugin, name="azure-kv")
    engine = kmsenvelope.Engine(registry=registry, config=config)
    blob = engine.encrypt(b"configured", context={"k": "v"})  # recipients from the file
    assert engine.inspect(blob).recipients[0].algorithm == "CKM_AES_KEY_WRAP_PAD"
    assert engine.decrypt(blob, {"k": "v"}) == b"configured"
