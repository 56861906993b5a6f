"""The kmsenvelope plugin: registers the ``gcp-kms`` scheme.

Loaded through the ``kmsenvelope`` entry-point group (entry point ``gcp-kms``), like any
third-party plugin. The Google Cloud SDK is imported when a key is opened, so installing this
plugin does not slow down commands that never touch Cloud KMS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kmsenvelope
from kmsenvelope.plugins import RegisterLoggers, RegisterProvider

from .settings import SETTINGS_SCHEMA
from .uri import SCHEME

if TYPE_CHECKING:
    from .kek import GcpKmsKey

__all__ = ["SCHEME", "kmsenvelope_register_loggers", "kmsenvelope_register_providers", "open_key"]


def open_key(uri: str, settings: Mapping[str, Any], /) -> GcpKmsKey:
    """Provider factory: the KEK named by a ``gcp-kms:`` URI, with the process-wide clients."""
    from .kek import GcpKmsKey

    return GcpKmsKey(uri, settings)


@kmsenvelope.hookimpl
def kmsenvelope_register_providers(register: RegisterProvider) -> None:
    """Register the ``gcp-kms`` scheme, with its settings schema."""
    register(SCHEME, open_key, schema=SETTINGS_SCHEMA)


@kmsenvelope.hookimpl
def kmsenvelope_register_loggers(register: RegisterLoggers) -> None:
    """Our ``kmsenvelope_gcp`` logger follows ``-v``; the Google SDK's and gRPC's never go below
    WARNING (at DEBUG the client logs requests and responses, which hold data keys)."""
    register(own=["kmsenvelope_gcp"], silenced=["google", "grpc", "urllib3"])
