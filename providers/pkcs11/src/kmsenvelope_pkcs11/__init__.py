"""kmsenvelope-pkcs11: wrap data keys with keys in a PKCS#11 token (AWS CloudHSM, SoftHSM2, …).

Registered through the ``kmsenvelope`` entry-point group (see :mod:`.plugin`) for the URI
schemes ``pkcs11:`` (RFC 7512) and ``aws-cloudhsm:`` (the same provider with CloudHSM's
defaults). Use it through kmsenvelope; the names below are for code that needs more:

* :func:`create_key` / :func:`create_key_at` -- generate a non-extractable wrapping key in a
  token (by module/token/PIN, or by key URI with the provider settings);
* :func:`open_key` -- open a KEK directly, without a registry;
* :func:`close_all` -- log out, close sessions and finalize modules (tests, shutdown).
"""

from __future__ import annotations

from .factory import cloudhsm_factory, open_key, pkcs11_factory
from .kek import Pkcs11KEK
from .keys import KEY_TYPES, KeySpec, create_key, create_key_at
from .pool import close_all
from .settings import Pkcs11Settings, load_settings
from .uri import Pkcs11Uri, parse_uri

__version__ = "0.1.0"

__all__ = [
    "KEY_TYPES",
    "KeySpec",
    "Pkcs11KEK",
    "Pkcs11Settings",
    "Pkcs11Uri",
    "close_all",
    "cloudhsm_factory",
    "create_key",
    "create_key_at",
    "load_settings",
    "open_key",
    "parse_uri",
    "pkcs11_factory",
]
