"""Fixtures for the Azure provider tests: emulated Entra ID + Key Vault + Managed HSM over HTTPS.

Everything talks to 127.0.0.1 only. Instance discovery is always disabled (with it, MSAL would
ask login.microsoftonline.com about the emulated authority), and ambient Azure environment
variables are cleared so no test can pick up a real identity or probe a real endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure_kv_cloud import SECRETS, TENANT, Cloud, MakeEngine, unique
from azure_kv_emulator import Authority, Client, make_tls

import kmsenvelope
import kmsenvelope_azure.plugin
from kmsenvelope import Config, Engine, ProviderRegistry
from kmsenvelope_azure.provider import AzureKeyVaultProvider

_AMBIENT = (
    "AZURE_",
    "IDENTITY_",
    "MSI_",
    "IMDS_",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


_PROXIES = ("http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_ambient_azure(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_AMBIENT) or name.lower() in _PROXIES:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("azure-cloud")
    tls = make_tls(tmp / "tls")
    authority = Authority(tls, TENANT)
    for client_id, secret in SECRETS.items():
        authority.add_client(Client(client_id, secret=secret))
    authority.start()
    made = Cloud(tls, authority, tmp)
    made.vault = made.start_vault()
    made.hsm = made.start_vault(hsm=True)
    try:
        yield made
    finally:
        made.vault.stop()
        made.hsm.stop()
        authority.stop()


@pytest.fixture(scope="session")
def vault_admin(cloud: Cloud) -> KeyClient:
    return cloud.admin(cloud.vault)


@pytest.fixture(scope="session")
def hsm_admin(cloud: Cloud) -> KeyClient:
    return cloud.admin(cloud.hsm)


@pytest.fixture
def rsa_key(vault_admin: KeyClient) -> KeyVaultKey:
    return vault_admin.create_rsa_key(unique("rsa"), size=2048)


@pytest.fixture
def oct_key(hsm_admin: KeyClient) -> KeyVaultKey:
    return hsm_admin.create_oct_key(unique("oct"), size=256, hardware_protected=True)


@pytest.fixture
def make_engine(cloud: Cloud) -> MakeEngine:
    """An Engine whose registry holds only the azure-kv plugin (never ambient plugins).

    ``fresh=True`` registers a new ``AzureKeyVaultProvider`` instance instead of the plugin
    module's shared one: new KeyClient, new credential, new token. The engine may contact any
    ``azure-kv`` key (``allow=["azure-kv:*"]``), so an envelope made by one engine opens in
    another: these tests are about the provider; strict decryption is tested in tests/core.
    """

    def build(*, fresh: bool = False, keys: tuple[Any, ...] = (), **settings: Any) -> Engine:
        registry = ProviderRegistry()
        if fresh:
            registry.register(kmsenvelope_azure.SCHEME, AzureKeyVaultProvider(), plugin="fresh")
        else:
            registry.add_plugin(kmsenvelope_azure.plugin, name="azure-kv")
        config = Config(providers={"azure-kv": cloud.settings(**settings)})
        return kmsenvelope.Engine(registry=registry, config=config, keys=keys, allow=["azure-kv:*"])

    return build


@pytest.fixture
def provider() -> Iterator[AzureKeyVaultProvider]:
    made = AzureKeyVaultProvider()
    yield made
    made.close()
