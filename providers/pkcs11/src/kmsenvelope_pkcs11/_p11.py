"""The one place python-pkcs11 is imported.

Everything exported here is ``Any``: python-pkcs11 is a thin Cython binding whose objects
(tokens, sessions, keys) we only pass around, and keeping ``Any`` at this one boundary keeps
the rest of the package strictly typed whatever the binding's own annotations say.

Nothing outside :mod:`kmsenvelope_pkcs11.pool` may call into these objects without holding
:data:`kmsenvelope_pkcs11.pool.LOCK`.
"""

from __future__ import annotations

from typing import Any

import pkcs11 as _pkcs11
import pkcs11.exceptions as _exceptions
import pkcs11.mechanisms as _mechanisms

__all__ = [
    "MGF",
    "Attribute",
    "GCMParams",
    "KeyType",
    "Mechanism",
    "MechanismFlag",
    "ObjectClass",
    "TokenFlag",
    "exc",
    "load_library",
    "mechanism",
]

pkcs11: Any = _pkcs11
exc: Any = _exceptions

Attribute: Any = _pkcs11.Attribute
ObjectClass: Any = _pkcs11.ObjectClass
KeyType: Any = _pkcs11.KeyType
Mechanism: Any = _pkcs11.Mechanism
MechanismFlag: Any = _pkcs11.MechanismFlag
MGF: Any = _pkcs11.MGF
TokenFlag: Any = _pkcs11.TokenFlag
GCMParams: Any = _mechanisms.GCMParams


def load_library(path: str) -> Any:
    """``pkcs11.lib(path)``: load (once per process) and ``C_Initialize`` a PKCS#11 module."""
    return pkcs11.lib(path)


def mechanism(value: int) -> Any:
    """The python-pkcs11 ``Mechanism`` for a CKM_* constant, vendor-defined ones included.

    python-pkcs11 insists on a ``Mechanism`` enum member, and its enum does not list vendor
    mechanisms such as CloudHSM's ``CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD`` (0x8000216F); for
    those we build a pseudo-member carrying the raw value, which is all the binding reads.
    """
    try:
        return Mechanism(value)
    except ValueError:
        member = int.__new__(Mechanism, value)
        member._name_ = f"VENDOR_{value:#x}"
        member._value_ = value
        return member
