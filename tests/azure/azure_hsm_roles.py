"""Managed HSM identities for the AES-GCM tests, registered on the emulated cloud on first use.

A256GCM (the default for oct-HSM keys) wraps with the HSM's ``encrypt`` and unwraps with its
``decrypt``. Managed HSM's built-in roles differ on exactly that:

* ``CRYPTO_USER`` -- 'Managed HSM Crypto User': get, wrapKey, unwrapKey, encrypt, decrypt.
* ``SERVICE_ENCRYPTION_USER`` -- 'Managed HSM Crypto Service Encryption User': get, wrapKey,
  unwrapKey only (enough for A256KW, not for A256GCM).
* ``ENCRYPT_ONLY`` -- get and encrypt: wraps with A256GCM, cannot unwrap.

Registering adds a client to the tenant and grants it on both vaults; no existing identity of
``azure_kv_cloud`` changes. (Kept out of conftest.py: the name is unique in the repository.)
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from azure_kv_cloud import TENANT, Cloud
from azure_kv_emulator import Client

import kmsenvelope
import kmsenvelope_azure.plugin
from kmsenvelope import Config, Engine, ProviderRegistry
from kmsenvelope_azure.provider import AzureKeyVaultProvider

CRYPTO_USER = "app-hsm-crypto-user"
SERVICE_ENCRYPTION_USER = "app-hsm-service-encryption-user"
ENCRYPT_ONLY = "app-hsm-encrypt-only"

ROLES: dict[str, frozenset[str]] = {
    CRYPTO_USER: frozenset({"get", "wrapKey", "unwrapKey", "encrypt", "decrypt"}),
    SERVICE_ENCRYPTION_USER: frozenset({"get", "wrapKey", "unwrapKey"}),
    ENCRYPT_ONLY: frozenset({"get", "encrypt"}),
}
_SECRETS = {client_id: f"{client_id}-{uuid.uuid4().hex}" for client_id in ROLES}
_LOCK = threading.Lock()


def role_settings(cloud: Cloud, client_id: str, **overrides: Any) -> dict[str, Any]:
    """``[providers.azure-kv]`` settings that sign in as ``client_id`` (registered if new)."""
    with _LOCK:
        if client_id not in cloud.authority.clients:
            cloud.authority.add_client(Client(client_id, secret=_SECRETS[client_id]))
        for vault in (cloud.vault, cloud.hsm):
            vault.grant(client_id, ROLES[client_id])
    identity = {
        "credential": "client-secret",
        "tenant_id": TENANT,
        "client_id": client_id,
        "client_secret": _SECRETS[client_id],
    }
    return cloud.common(**{**identity, **overrides})


def role_engine(
    settings: dict[str, Any], *, fresh: bool = False, keys: tuple[Any, ...] = ()
) -> Engine:
    """An Engine with only the azure-kv plugin and ``settings``, like conftest's ``make_engine``
    (``fresh``: a new provider instance, so new clients and tokens)."""
    registry = ProviderRegistry()
    if fresh:
        registry.register(kmsenvelope_azure.SCHEME, AzureKeyVaultProvider(), plugin="fresh")
    else:
        registry.add_plugin(kmsenvelope_azure.plugin, name="azure-kv")
    config = Config(providers={"azure-kv": settings})
    return kmsenvelope.Engine(registry=registry, config=config, keys=keys, allow=["azure-kv:*"])
