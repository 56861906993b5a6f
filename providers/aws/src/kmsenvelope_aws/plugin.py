"""The kmsenvelope plugin: registers the ``aws-kms`` scheme.

Loaded through the ``kmsenvelope`` entry-point group (entry point ``aws-kms``), like any
third-party plugin. boto3 is imported only when a key is opened, so merely installing this
plugin does not slow down commands that never touch AWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kmsenvelope
from kmsenvelope.plugins import RegisterLoggers, RegisterProvider

from .key_uri import SCHEME
from .settings import SETTINGS_SCHEMA

if TYPE_CHECKING:
    from .kek import AwsKmsKey

__all__ = ["kmsenvelope_register_loggers", "kmsenvelope_register_providers", "open_key"]


def open_key(uri: str, settings: Mapping[str, Any], /) -> AwsKmsKey:
    """Provider factory: the KEK named by an ``aws-kms:`` URI, with the process-wide clients."""
    from .kek import AwsKmsKey

    return AwsKmsKey(uri, settings)


@kmsenvelope.hookimpl
def kmsenvelope_register_providers(register: RegisterProvider) -> None:
    """Register the ``aws-kms`` scheme, with its settings schema."""
    register(SCHEME, open_key, schema=SETTINGS_SCHEMA)


@kmsenvelope.hookimpl
def kmsenvelope_register_loggers(register: RegisterLoggers) -> None:
    """Our ``kmsenvelope_aws`` logger follows ``-v``; boto3's never go below WARNING: botocore
    logs KMS request and response bodies at DEBUG, and those hold data keys."""
    register(own=["kmsenvelope_aws"], silenced=["botocore", "boto3", "s3transfer", "urllib3"])
