"""The ``vault-transit`` provider factory: ``VaultTransitProvider()(uri, settings) -> KEK``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .client import ClientCache
from .kek import VaultTransitKEK
from .settings import parse_settings
from .uri import parse_key_uri

__all__ = ["VaultTransitProvider"]


class VaultTransitProvider:
    """Opens ``vault-transit:`` key URIs. Each instance has its own clients and tokens.

    Opening a key makes no network call (the first ``wrap``/``unwrap`` logs in if needed);
    malformed URIs and settings raise ``kmsenvelope.ConfigError`` here.
    """

    def __init__(self) -> None:
        self._clients = ClientCache()

    def __call__(self, uri: str, settings: Mapping[str, Any], /) -> VaultTransitKEK:
        key = parse_key_uri(uri)
        parsed = parse_settings(settings)
        return VaultTransitKEK(key, self._clients.session(key.address, parsed), parsed)

    def close(self) -> None:
        """Close the HTTP connections of every client this provider opened."""
        self._clients.close()

    def __repr__(self) -> str:
        return "VaultTransitProvider()"
