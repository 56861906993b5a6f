"""AWS KMS provider for kmsenvelope: key URIs ``aws-kms:ARN``, ``aws-kms:KEY-ID``,
``aws-kms:alias/NAME`` and alias ARNs.

Installed as the ``aws-kms`` plugin of the ``kmsenvelope`` entry-point group; use it through
``kmsenvelope`` (config ``[providers.aws-kms]``), or open a key in code::

    from kmsenvelope_aws import AwsKmsKey
    kek = AwsKmsKey("aws-kms:alias/payments", {"region": "eu-west-1"})

boto3 is imported on first use of a name that needs it, so loading the plugin stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .key_uri import SCHEME, KeyRef, KeyRefKind, parse_key_uri
from .plugin import open_key
from .settings import ProviderSettings

if TYPE_CHECKING:
    from .client_cache import ClientCache, ClientSpec, clear_client_cache
    from .kek import RSA_OAEP_SHA_256, SYMMETRIC_DEFAULT, AwsKmsKey
    from .retry import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "RSA_OAEP_SHA_256",
    "SCHEME",
    "SYMMETRIC_DEFAULT",
    "AwsKmsKey",
    "ClientCache",
    "ClientSpec",
    "KeyRef",
    "KeyRefKind",
    "ProviderSettings",
    "RetryPolicy",
    "clear_client_cache",
    "open_key",
    "parse_key_uri",
]

_LAZY = {
    "ClientCache": ".client_cache",
    "ClientSpec": ".client_cache",
    "clear_client_cache": ".client_cache",
    "RSA_OAEP_SHA_256": ".kek",
    "SYMMETRIC_DEFAULT": ".kek",
    "AwsKmsKey": ".kek",
    "RetryPolicy": ".retry",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
