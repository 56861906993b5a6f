"""The kmsenvelope plugin: registers the ``aws-kms`` scheme and the ``s3://`` envelope store.

Loaded through the ``kmsenvelope`` entry-point group (entry point ``aws-kms``), like any
third-party plugin. boto3 is imported only when a key is opened, so merely installing this
plugin does not slow down commands that never touch AWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kmsenvelope
from kmsenvelope.hooks import RegisterStore
from kmsenvelope.plugins import RegisterLoggers, RegisterProvider

from .key_uri import SCHEME
from .settings import SETTINGS_SCHEMA

if TYPE_CHECKING:
    from kmsenvelope.config import Config
    from kmsenvelope.migrate.store_urls import StoreURL

    from .kek import AwsKmsKey
    from .s3_store import S3Store

__all__ = [
    "kmsenvelope_register_loggers",
    "kmsenvelope_register_providers",
    "kmsenvelope_register_stores",
    "open_key",
    "open_s3",
]


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


@kmsenvelope.hookimpl
def kmsenvelope_register_stores(register: RegisterStore) -> None:
    """Envelopes in S3: ``s3://BUCKET[/PREFIX]`` (conditional writes with If-Match)."""
    register("s3", open_s3)


def open_s3(url: StoreURL, config: Config, /) -> S3Store:
    """Store factory for ``s3://`` (boto3 imported when the store is opened)."""
    from .s3_store import open_s3 as open_store

    return open_store(url, config)
