"""The kmsenvelope plugin: registers the ``azure-kv`` scheme and the ``az://`` envelope store.

Loaded through the ``kmsenvelope`` entry-point group (entry point ``azure-kv``), exactly like a
third-party plugin. The Azure SDK is imported on the first key opened, not when the plugin
loads, so listing providers stays fast.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kmsenvelope
from kmsenvelope.hooks import RegisterStore
from kmsenvelope.kek import KeyEncryptionKey
from kmsenvelope.plugins import RegisterLoggers, RegisterProvider

from .settings import SETTINGS_SCHEMA
from .uri import SCHEME

if TYPE_CHECKING:
    from kmsenvelope.config import Config
    from kmsenvelope.migrate.store_urls import StoreURL

    from .blob_store import AzureBlobStore
    from .provider import AzureKeyVaultProvider

__all__ = [
    "SCHEME",
    "kmsenvelope_register_loggers",
    "kmsenvelope_register_providers",
    "kmsenvelope_register_stores",
    "open_az",
    "open_key",
]

_lock = threading.Lock()
_provider: AzureKeyVaultProvider | None = None


def open_key(uri: str, settings: Mapping[str, Any], /) -> KeyEncryptionKey:
    """The registered factory: open ``uri`` with the process-wide provider instance."""
    global _provider
    with _lock:
        if _provider is None:
            from .provider import AzureKeyVaultProvider

            _provider = AzureKeyVaultProvider()
        provider = _provider
    return provider(uri, settings)


@kmsenvelope.hookimpl
def kmsenvelope_register_providers(register: RegisterProvider) -> None:
    """Register the ``azure-kv`` scheme, with its settings schema."""
    register(SCHEME, open_key, schema=SETTINGS_SCHEMA)


@kmsenvelope.hookimpl
def kmsenvelope_register_loggers(register: RegisterLoggers) -> None:
    """Our ``kmsenvelope_azure`` loggers follow ``-v``; the Azure SDK's, MSAL's and urllib3's
    never go below WARNING (at DEBUG they log requests, responses and tokens)."""
    register(own=["kmsenvelope_azure"], silenced=["azure", "msal", "urllib3"])


@kmsenvelope.hookimpl
def kmsenvelope_register_stores(register: RegisterStore) -> None:
    """Envelopes in Azure Blob Storage: ``az://CONTAINER[/PREFIX]`` (conditional writes with
    If-Match on the ETag)."""
    register("az", open_az)


def open_az(url: StoreURL, config: Config, /) -> AzureBlobStore:
    """Store factory for ``az://`` (azure-storage-blob imported when the store is opened)."""
    from .blob_store import open_az as open_store

    return open_store(url, config)
