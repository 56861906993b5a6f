"""Provider factories: ``factory(uri, settings) -> KeyEncryptionKey`` for each scheme."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .cloudhsm import CLOUDHSM
from .kek import Pkcs11KEK
from .settings import PKCS11, Preset, load_settings

__all__ = ["cloudhsm_factory", "open_key", "pkcs11_factory"]


def open_key(
    uri: str,
    settings: Mapping[str, Any],
    preset: Preset = PKCS11,
    env: Mapping[str, str] | None = None,
) -> Pkcs11KEK:
    """Open the key named by ``uri`` with ``settings`` (a ``[providers.SCHEME]`` table).

    Validates the URI and settings now (``ConfigError``); the token is contacted on first use.
    ``env`` replaces ``os.environ`` as the source of the PIN/module variables.
    """
    return Pkcs11KEK(uri, load_settings(settings, preset, env))


def pkcs11_factory(uri: str, settings: Mapping[str, Any], /) -> Pkcs11KEK:
    """Factory for ``pkcs11:`` URIs."""
    return open_key(uri, settings, PKCS11)


def cloudhsm_factory(uri: str, settings: Mapping[str, Any], /) -> Pkcs11KEK:
    """Factory for ``aws-cloudhsm:`` URIs (the CloudHSM preset)."""
    return open_key(uri, settings, CLOUDHSM)
