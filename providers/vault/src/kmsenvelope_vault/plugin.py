"""The kmsenvelope plugin: registers the ``vault-transit`` scheme.

Loaded through the ``kmsenvelope`` entry-point group (entry point ``vault-transit``), exactly like
a third-party plugin. hvac is imported on the first key opened, not when the plugin loads, so
listing providers stays fast.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kmsenvelope
from kmsenvelope.kek import KeyEncryptionKey
from kmsenvelope.plugins import RegisterLoggers, RegisterProvider

from .settings import SETTINGS_SCHEMA
from .uri import SCHEME

if TYPE_CHECKING:
    from .provider import VaultTransitProvider

__all__ = ["SCHEME", "kmsenvelope_register_loggers", "kmsenvelope_register_providers", "open_key"]

_lock = threading.Lock()
_provider: VaultTransitProvider | None = None


def open_key(uri: str, settings: Mapping[str, Any], /) -> KeyEncryptionKey:
    """The registered factory: open ``uri`` with the process-wide provider instance."""
    global _provider
    with _lock:
        if _provider is None:
            from .provider import VaultTransitProvider

            _provider = VaultTransitProvider()
        provider = _provider
    return provider(uri, settings)


@kmsenvelope.hookimpl
def kmsenvelope_register_providers(register: RegisterProvider) -> None:
    """Register the ``vault-transit`` scheme, with its settings schema."""
    register(SCHEME, open_key, schema=SETTINGS_SCHEMA)


@kmsenvelope.hookimpl
def kmsenvelope_register_loggers(register: RegisterLoggers) -> None:
    """Our ``kmsenvelope_vault`` logger follows ``-v``; hvac's, requests' and urllib3's never go
    below WARNING."""
    register(own=["kmsenvelope_vault"], silenced=["hvac", "requests", "urllib3"])
