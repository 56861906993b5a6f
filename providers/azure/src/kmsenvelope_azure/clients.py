"""A cache of credentials and ``KeyClient`` objects, one per vault and settings.

Every KEK of a vault shares one ``KeyClient`` (one connection pool, one cached challenge) and
all vaults opened with the same settings share one credential (one token cache), so opening the
many versioned key ids recorded in old envelopes costs no extra sign-in. Each
``AzureKeyVaultProvider`` owns a cache; a new provider instance therefore means new clients and
new tokens.
"""

from __future__ import annotations

import threading

from azure.core.credentials import TokenCredential
from azure.keyvault.keys import KeyClient

from kmsenvelope import ConfigError

from .credentials import build_credential, transport_kwargs
from .retry import BoundedRetryPolicy
from .settings import AzureSettings

__all__ = ["ClientCache"]


class ClientCache:
    """Thread-safe cache of ``KeyClient`` per ``(vault_url, settings)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._credentials: dict[AzureSettings, TokenCredential] = {}
        self._clients: dict[tuple[str, AzureSettings], KeyClient] = {}

    def credential(self, settings: AzureSettings) -> TokenCredential:
        """The credential for ``settings``, built once."""
        with self._lock:
            credential = self._credentials.get(settings)
        if credential is not None:
            return credential
        built = build_credential(settings)
        with self._lock:
            return self._credentials.setdefault(settings, built)

    def key_client(self, vault_url: str, settings: AzureSettings) -> KeyClient:
        """The ``KeyClient`` for ``vault_url`` configured by ``settings``, built once."""
        with self._lock:
            client = self._clients.get((vault_url, settings))
        if client is not None:
            return client
        extra = {} if settings.api_version is None else {"api_version": settings.api_version}
        try:
            built = KeyClient(
                vault_url,
                self.credential(settings),
                verify_challenge_resource=settings.verify_challenge_resource,
                retry_policy=BoundedRetryPolicy.from_settings(settings),
                **transport_kwargs(settings),
                **extra,
            )
        except NotImplementedError as exc:  # the SDK's answer to an unknown api_version
            raise ConfigError(f"[providers.azure-kv] api_version: {exc}") from None
        with self._lock:
            return self._clients.setdefault((vault_url, settings), built)

    def close(self) -> None:
        """Close every client's connections and forget all clients and credentials."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
            self._credentials.clear()
        for client in clients:
            client.close()
