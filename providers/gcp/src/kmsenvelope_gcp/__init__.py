"""kmsenvelope-gcp: the Google Cloud KMS provider (scheme ``gcp-kms``).

Key URIs: ``gcp-kms:projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/N]``.
Installed as the ``gcp-kms`` plugin of the ``kmsenvelope`` entry-point group; use it through
``kmsenvelope`` (config ``[providers.gcp-kms]``), or open a key in code::

    from kmsenvelope_gcp import GcpKmsKey
    kek = GcpKmsKey("gcp-kms:projects/p/locations/global/keyRings/r/cryptoKeys/k", {})

The Google Cloud SDK is imported on first use of a name that needs it.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from .settings import SETTINGS_SCHEMA, GcpSettings, parse_settings
from .uri import SCHEME, KeyName, parse_key_uri

if TYPE_CHECKING:
    from .clients import ClientCache, clear_client_cache
    from .kek import SYMMETRIC, GcpKmsKey

__version__ = "0.1.0"

# gRPC's C core writes INFO lines straight to stderr, past Python logging (e.g. when a server
# sends GOAWAY), which would break the CLI's one-line errors. Only a default: a GRPC_VERBOSITY
# the user set wins. Set before grpc is imported (it is imported with the SDK, on first use).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__all__ = [
    "SCHEME",
    "SETTINGS_SCHEMA",
    "SYMMETRIC",
    "ClientCache",
    "GcpKmsKey",
    "GcpSettings",
    "KeyName",
    "clear_client_cache",
    "parse_key_uri",
    "parse_settings",
]

_LAZY = {
    "ClientCache": ".clients",
    "clear_client_cache": ".clients",
    "SYMMETRIC": ".kek",
    "GcpKmsKey": ".kek",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
