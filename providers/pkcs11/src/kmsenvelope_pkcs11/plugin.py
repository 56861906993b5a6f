"""The ``kmsenvelope`` entry point: registers the schemes ``pkcs11`` and ``aws-cloudhsm``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kmsenvelope
from kmsenvelope.plugins import RegisterKeyCreator, RegisterLoggers, RegisterProvider

from .cloudhsm import CLOUDHSM
from .factory import cloudhsm_factory, pkcs11_factory
from .keys import create_key_at
from .settings import PKCS11

__all__ = [
    "kmsenvelope_register_key_creators",
    "kmsenvelope_register_loggers",
    "kmsenvelope_register_providers",
]


@kmsenvelope.hookimpl
def kmsenvelope_register_providers(register: RegisterProvider) -> None:
    """Register the PKCS#11 provider and its AWS CloudHSM preset, with their settings schemas."""
    register("pkcs11", pkcs11_factory, schema=PKCS11.schema)
    register("aws-cloudhsm", cloudhsm_factory, schema=CLOUDHSM.schema)


def _create(uri: str, settings: Mapping[str, Any], key_type: str) -> str:
    return create_key_at(uri, settings, key_type)  # type: ignore[arg-type]  # validated there


@kmsenvelope.hookimpl
def kmsenvelope_register_key_creators(register: RegisterKeyCreator) -> None:
    """``kmsenvelope keys create 'pkcs11:token=T;object=NAME' --type aes256`` makes the key."""
    register("pkcs11", _create)
    register("aws-cloudhsm", _create)


@kmsenvelope.hookimpl
def kmsenvelope_register_loggers(register: RegisterLoggers) -> None:
    """``kmsenvelope_pkcs11`` loggers follow ``-v`` (``kmsenvelope.pkcs11`` does with the core's);
    python-pkcs11's never go below WARNING."""
    register(own=["kmsenvelope_pkcs11"], silenced=["pkcs11"])
