"""The core's provider conformance suite, run against the emulated Key Vault and Managed HSM.

Key Vault's wrapKey takes no additional authenticated data (RSA-OAEP-256, A256KW): the suite
knows both names as algorithms without AAD and checks that the envelope's header MAC binds the
context instead (see test_azure_context.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.keyvault.keys import KeyClient
from azure_kv_cloud import Cloud, unique, uri_of

from kmsenvelope.conformance import ProviderConformance
from kmsenvelope_azure.kek import AzureKeyVaultKEK
from kmsenvelope_azure.provider import AzureKeyVaultProvider


def _reopen(settings: dict[str, Any]) -> Any:
    # Every call builds a new provider: new KeyClient, new credential, new token.
    return lambda uri: AzureKeyVaultProvider()(uri, settings)


class TestRsaKeyConformance(ProviderConformance):
    """An RSA key in a Key Vault: RSA-OAEP-256, wrapped locally, unwrapped by the service."""

    @pytest.fixture
    def kek(self, cloud: Cloud, vault_admin: KeyClient) -> AzureKeyVaultKEK:
        key = vault_admin.create_rsa_key(unique("conf-rsa"), size=2048)
        return AzureKeyVaultProvider()(uri_of(key), cloud.settings())

    @pytest.fixture
    def reopen(self, cloud: Cloud) -> Any:
        return _reopen(cloud.settings())

    @pytest.fixture
    def unknown_key(self, cloud: Cloud) -> str:
        return f"azure-kv:{cloud.vault.url}/keys/{unique('missing')}"

    @pytest.fixture
    def other_kek(self, cloud: Cloud, vault_admin: KeyClient) -> AzureKeyVaultKEK:
        key = vault_admin.create_rsa_key(unique("conf-other"), size=2048)
        return AzureKeyVaultProvider()(uri_of(key), cloud.settings())


class TestOctHsmKeyConformance(ProviderConformance):
    """An oct-HSM key in a Managed HSM: A256KW, wrapped and unwrapped by the service."""

    @pytest.fixture
    def kek(self, cloud: Cloud, hsm_admin: KeyClient) -> AzureKeyVaultKEK:
        key = hsm_admin.create_oct_key(unique("conf-oct"), size=256, hardware_protected=True)
        return AzureKeyVaultProvider()(uri_of(key), cloud.settings())

    @pytest.fixture
    def reopen(self, cloud: Cloud) -> Any:
        return _reopen(cloud.settings())

    @pytest.fixture
    def unknown_key(self, cloud: Cloud) -> str:
        return f"azure-kv:{cloud.hsm.url}/keys/{unique('missing')}"

    @pytest.fixture
    def other_kek(self, cloud: Cloud, hsm_admin: KeyClient) -> AzureKeyVaultKEK:
        key = hsm_admin.create_oct_key(unique("conf-other"), size=256, hardware_protected=True)
        return AzureKeyVaultProvider()(uri_of(key), cloud.settings())
