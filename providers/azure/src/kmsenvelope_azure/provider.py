"""The ``azure-kv`` provider factory: ``AzureKeyVaultProvider()(uri, settings) -> KEK``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .clients import ClientCache
from .kek import AzureKeyVaultKEK
from .settings import parse_settings
from .uri import parse_key_uri

__all__ = ["AzureKeyVaultProvider"]


class AzureKeyVaultProvider:
    """Opens ``azure-kv:`` key URIs. Each instance has its own clients and credentials.

    Opening a key makes no network call; the first ``wrap``/``unwrap`` does. Malformed URIs
    and settings raise ``kmsenvelope.ConfigError`` here.
    """

    def __init__(self) -> None:
        self._clients = ClientCache()

    def __call__(self, uri: str, settings: Mapping[str, Any], /) -> AzureKeyVaultKEK:
        key = parse_key_uri(uri)
        parsed = parse_settings(settings)
        return AzureKeyVaultKEK(key, self._clients.key_client(key.vault_url, parsed), parsed)

    def close(self) -> None:
        """Close the HTTP connections of every client this provider opened."""
        self._clients.close()

    def __repr__(self) -> str:
        return "AzureKeyVaultProvider()"
