"""The core's provider conformance suite for oct-HSM keys under both symmetric algorithms.

* A256GCM (the default): an AEAD name in the suite's own tables, so the suite demands that the
  KEK itself refuses another or an empty context (the HSM's decrypt does) and that the IV the
  HSM chose -- the first 12 bytes of the stanza -- never repeats.
* A256KW (``oct_algorithm = "A256KW"``, the fallback for identities without encrypt/decrypt):
  no AAD, deterministic; the envelope's header MAC binds the context.

Both sign in as 'Managed HSM Crypto User' (see azure_hsm_roles.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient
from azure_hsm_roles import CRYPTO_USER, role_settings
from azure_kv_cloud import Cloud, unique, uri_of

from kmsenvelope import WrappedKey
from kmsenvelope.conformance import ProviderConformance
from kmsenvelope_azure.kek import AzureKeyVaultKEK
from kmsenvelope_azure.provider import AzureKeyVaultProvider

_GCM = re.compile(r"A(128|192|256)GCM")


class _OctHsm(ProviderConformance):
    """Fixtures shared by both classes: ``oct_algorithm`` names the algorithm under test."""

    oct_algorithm = ""

    def _settings(self, cloud: Cloud) -> dict[str, Any]:
        return role_settings(cloud, CRYPTO_USER, oct_algorithm=self.oct_algorithm)

    def _new_kek(self, cloud: Cloud, hsm_admin: KeyClient, prefix: str) -> AzureKeyVaultKEK:
        key = hsm_admin.create_oct_key(unique(prefix), size=256, hardware_protected=True)
        return AzureKeyVaultProvider()(uri_of(key), self._settings(cloud))

    @pytest.fixture
    def kek(self, cloud: Cloud, hsm_admin: KeyClient) -> AzureKeyVaultKEK:
        made = self._new_kek(cloud, hsm_admin, "conf-gcm")
        assert made.wrap(bytes(32), {}).algorithm == self.oct_algorithm
        return made

    @pytest.fixture
    def reopen(self, cloud: Cloud) -> Any:
        # Every call builds a new provider: new KeyClient, new credential, new token.
        settings = self._settings(cloud)
        return lambda uri: AzureKeyVaultProvider()(uri, settings)

    @pytest.fixture
    def unknown_key(self, cloud: Cloud) -> str:
        return f"azure-kv:{cloud.hsm.url}/keys/{unique('missing')}"

    @pytest.fixture
    def other_kek(self, cloud: Cloud, hsm_admin: KeyClient) -> AzureKeyVaultKEK:
        return self._new_kek(cloud, hsm_admin, "conf-other")


class TestOctHsmA256GcmConformance(_OctHsm):
    """A256GCM through the HSM's encrypt/decrypt, the context as AAD."""

    oct_algorithm = "A256GCM"

    def wrap_nonce(self, wrapped: WrappedKey) -> bytes | None:
        """The HSM's IV: the stanza is ``iv (12) || ciphertext || tag (16)``."""
        if _GCM.fullmatch(wrapped.algorithm):
            return wrapped.ciphertext[:12]
        return super().wrap_nonce(wrapped)


class TestOctHsmA256KwConformance(_OctHsm):
    """A256KW through the HSM's wrapKey/unwrapKey (no AAD)."""

    oct_algorithm = "A256KW"
