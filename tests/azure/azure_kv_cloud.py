"""The emulated Azure cloud the provider tests run against, and small helpers.

(Kept out of conftest.py so test modules can import it by a name unique in the repository.)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure_kv_emulator import ALL_PERMISSIONS, Authority, TlsFiles, Vault

from kmsenvelope import Engine

TENANT = "72f988bf-0000-4000-8000-00000000cafe"
WRAPPER = "app-wrapper"  # get, wrapKey, unwrapKey, encrypt, decrypt: '... Crypto User'
ADMIN = "app-admin"  # everything: creates, rotates, disables keys
NO_UNWRAP = "app-no-unwrap"  # get and wrapKey only
NO_GET = "app-no-get"  # wrapKey and unwrapKey only
NO_WRAP = "app-no-wrap"  # get and unwrapKey only
SECRETS = {
    WRAPPER: "wrapper-" + uuid.uuid4().hex,
    ADMIN: "admin-" + uuid.uuid4().hex,
    NO_UNWRAP: "nounwrap-" + uuid.uuid4().hex,
    NO_GET: "noget-" + uuid.uuid4().hex,
    NO_WRAP: "nowrap-" + uuid.uuid4().hex,
}
PERMISSIONS = {
    WRAPPER: {"get", "wrapKey", "unwrapKey", "encrypt", "decrypt"},
    ADMIN: set(ALL_PERMISSIONS),
    NO_UNWRAP: {"get", "wrapKey", "encrypt"},
    NO_GET: {"wrapKey", "unwrapKey", "encrypt", "decrypt"},
    NO_WRAP: {"get", "unwrapKey", "decrypt"},
}


@dataclass
class Cloud:
    """The emulated cloud: one tenant, a Key Vault and a Managed HSM, sharing one CA."""

    tls: TlsFiles
    authority: Authority
    tmp: Path
    vault: Vault = field(init=False)
    hsm: Vault = field(init=False)

    def common(self, *, entra: bool = True, **overrides: Any) -> dict[str, Any]:
        """Settings every identity needs in this cloud (``entra``: a Microsoft Entra login)."""
        base: dict[str, Any] = {
            "verify_challenge_resource": False,  # the emulator is 127.0.0.1, not *.vault.azure.net
            "ca_bundle": str(self.tls.ca),
            "retry_backoff_factor": 0.05,
        }
        if entra:
            base["authority_host"] = self.authority.url
            base["disable_instance_discovery"] = True  # else MSAL asks login.microsoftonline.com
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def settings(self, client_id: str = WRAPPER, **overrides: Any) -> dict[str, Any]:
        """``[providers.azure-kv]`` settings for a client-secret identity in this cloud."""
        identity = {
            "credential": "client-secret",
            "tenant_id": TENANT,
            "client_id": client_id,
            "client_secret": SECRETS[client_id],
        }
        return self.common(**{**identity, **overrides})

    def admin(self, vault: Vault) -> KeyClient:
        credential = ClientSecretCredential(
            TENANT,
            ADMIN,
            SECRETS[ADMIN],
            authority=self.authority.url,
            disable_instance_discovery=True,
            connection_verify=str(self.tls.ca),
        )
        return KeyClient(
            vault.url,
            credential,
            verify_challenge_resource=False,
            connection_verify=str(self.tls.ca),
        )

    def start_vault(self, *, hsm: bool = False) -> Vault:
        vault = Vault(self.tls, self.authority, hsm=hsm)
        for client_id, permissions in PERMISSIONS.items():
            vault.grant(client_id, permissions)
        vault.start()
        return vault


MakeEngine = Callable[..., Engine]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def uri_of(key: KeyVaultKey, *, versioned: bool = False) -> str:
    """The azure-kv URI of a key returned by the admin client."""
    kid = key.id if versioned else key.id.rsplit("/", 1)[0]
    return f"azure-kv:{kid}"
