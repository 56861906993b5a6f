"""Provider settings: the ``[providers.pkcs11]`` table plus environment variables, validated.

::

    [providers.pkcs11]
    module = "/usr/lib/softhsm/libsofthsm2.so"   # or KMSENVELOPE_PKCS11_MODULE
    pin = "…"                                    # or KMSENVELOPE_PKCS11_PIN (better)
    token = "kmsenvelope"        # token used when a URI has no token= attribute
    aes_mechanism = "gcm"        # "gcm" (AES-GCM, context as AAD) or "kwp" (RFC 5649)
    kwp_mechanism = 0x210A       # CKM_* constant for AES key wrap with padding
    oaep_hash = "sha256"         # RSA-OAEP hash: sha1, sha224, sha256, sha384, sha512
    gcm_iv = "host"              # "host": random IV from the host; "hsm": the HSM picks it
    max_sessions = 4             # pooled sessions per token

Every problem is a ``ConfigError`` naming the setting. The PIN is never shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from kmsenvelope.errors import ConfigError

from .mechanisms import KWP_MECHANISMS, OAEP_HASHES, is_kwp_mechanism

__all__ = ["AesMode", "GcmIv", "Pkcs11Settings", "Preset", "load_settings"]

AesMode = Literal["gcm", "kwp"]
GcmIv = Literal["host", "hsm"]

MODULE_ENV = "KMSENVELOPE_PKCS11_MODULE"
PIN_ENV = "KMSENVELOPE_PKCS11_PIN"

_COMMON_KEYS = frozenset(
    {
        "module",
        "pin",
        "token",
        "aes_mechanism",
        "kwp_mechanism",
        "oaep_hash",
        "gcm_iv",
        "max_sessions",
    }
)


@dataclass(frozen=True, slots=True)
class Preset:
    """What differs between ``pkcs11`` and a vendor preset such as ``aws-cloudhsm``."""

    scheme: str
    module: str | None = None
    module_env: str | None = MODULE_ENV
    kwp_mechanism: int = 0x210A
    gcm_iv: GcmIv = "host"
    extra_keys: frozenset[str] = frozenset()
    # (settings, env) -> (pin, where it came from) or None; the default reads 'pin' / PIN_ENV.
    credentials: Callable[[Mapping[str, Any], Mapping[str, str]], tuple[str, str] | None] | None = (
        None
    )


PKCS11 = Preset("pkcs11")


@dataclass(frozen=True, slots=True)
class Pkcs11Settings:
    """Validated settings for one scheme. ``repr`` never shows the PIN."""

    scheme: str
    module: str
    module_source: str
    pin: str = field(repr=False)
    pin_source: str
    token: str | None = None
    aes_mechanism: AesMode = "gcm"
    kwp_mechanism: int = 0x210A
    oaep_hash: str = "sha256"
    gcm_iv: GcmIv = "host"
    max_sessions: int = 4

    def setting(self, name: str) -> str:
        """How to refer to a setting in a message: ``'oaep_hash' in [providers.pkcs11]``."""
        return f"'{name}' in [providers.{self.scheme}]"

    def __repr__(self) -> str:
        return (
            f"Pkcs11Settings(scheme={self.scheme!r}, module={self.module!r}, pin=<hidden, "
            f"from {self.pin_source}>, token={self.token!r}, aes_mechanism="
            f"{self.aes_mechanism!r}, kwp_mechanism={self.kwp_mechanism:#x}, oaep_hash="
            f"{self.oaep_hash!r}, gcm_iv={self.gcm_iv!r}, max_sessions={self.max_sessions})"
        )


def _str(settings: Mapping[str, Any], name: str, scheme: str) -> str | None:
    value = settings.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"'{name}' in [providers.{scheme}] must be a non-empty string")
    return value


def _choice(
    settings: Mapping[str, Any], name: str, scheme: str, allowed: tuple[str, ...], default: str
) -> str:
    value = _str(settings, name, scheme)
    if value is None:
        return default
    lowered = value.lower().replace("-", "")
    if lowered not in allowed:
        raise ConfigError(
            f"'{name}' in [providers.{scheme}] is {value!r}; expected one of: {', '.join(allowed)}"
        )
    return lowered


def _kwp_mechanism(value: Any, scheme: str, default: int) -> int:
    if value is None:
        return default
    where = f"'kwp_mechanism' in [providers.{scheme}]"
    number: int
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a CKM_* number such as 0x210A")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        named = KWP_MECHANISMS.get(value.strip().upper())
        if named is not None:
            number = named
        else:
            try:
                number = int(value.strip(), 0)
            except ValueError:
                raise ConfigError(
                    f"{where} is {value!r}; expected a number such as 0x210A or one of "
                    f"{', '.join(sorted(KWP_MECHANISMS))}"
                ) from None
    else:
        raise ConfigError(f"{where} must be a CKM_* number such as 0x210A")
    if not is_kwp_mechanism(number):
        raise ConfigError(
            f"{where} is {number:#x}, which is not an AES key-wrap-with-padding mechanism "
            "(standard: 0x210A CKM_AES_KEY_WRAP_PAD, 0x210B CKM_AES_KEY_WRAP_KWP; or a "
            "vendor-defined value >= 0x80000000)"
        )
    return number


def _max_sessions(value: Any, scheme: str) -> int:
    if value is None:
        return 4
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or not 1 <= number <= 64:
        raise ConfigError(f"'max_sessions' in [providers.{scheme}] must be an integer 1..64")
    return number


def _default_credentials(
    settings: Mapping[str, Any], env: Mapping[str, str], scheme: str
) -> tuple[str, str] | None:
    pin = settings.get("pin")
    if pin is not None:
        if not isinstance(pin, str) or not pin:
            raise ConfigError(f"'pin' in [providers.{scheme}] must be a non-empty string")
        return pin, f"setting 'pin' in [providers.{scheme}]"
    if env.get(PIN_ENV):
        return env[PIN_ENV], f"environment variable {PIN_ENV}"
    return None


def load_settings(
    settings: Mapping[str, Any],
    preset: Preset = PKCS11,
    env: Mapping[str, str] | None = None,
) -> Pkcs11Settings:
    """Validate ``settings`` (the ``[providers.SCHEME]`` table) against ``preset``."""
    env = os.environ if env is None else env
    scheme = preset.scheme
    if not isinstance(settings, Mapping):
        raise ConfigError(f"[providers.{scheme}] must be a table of settings")
    allowed = _COMMON_KEYS | preset.extra_keys
    unknown = sorted(k for k in settings if k not in allowed)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(map(repr, unknown))} in [providers.{scheme}] "
            f"(allowed: {', '.join(sorted(allowed))})"
        )

    module = _str(settings, "module", scheme)
    module_source = f"setting 'module' in [providers.{scheme}]"
    if module is None and preset.module_env and env.get(preset.module_env):
        module, module_source = env[preset.module_env], f"environment variable {preset.module_env}"
    if module is None and preset.module is not None:
        module, module_source = preset.module, f"the {scheme} default"
    if module is None:
        also = f" or {preset.module_env}" if preset.module_env else ""
        raise ConfigError(
            f"no PKCS#11 module configured for {scheme}: set 'module' in [providers.{scheme}]"
            f"{also} (e.g. /usr/lib/softhsm/libsofthsm2.so)"
        )

    if preset.credentials is not None:
        found = preset.credentials(settings, env)
    else:
        found = _default_credentials(settings, env, scheme)
    if found is None:
        raise ConfigError(
            f"no PIN configured for {scheme}: set {PIN_ENV} (or 'pin' in [providers.{scheme}])"
        )
    pin, pin_source = found

    return Pkcs11Settings(
        scheme=scheme,
        module=os.path.expanduser(module),
        module_source=module_source,
        pin=pin,
        pin_source=pin_source,
        token=_str(settings, "token", scheme),
        aes_mechanism=cast(
            AesMode, _choice(settings, "aes_mechanism", scheme, ("gcm", "kwp"), "gcm")
        ),
        kwp_mechanism=_kwp_mechanism(settings.get("kwp_mechanism"), scheme, preset.kwp_mechanism),
        oaep_hash=_choice(settings, "oaep_hash", scheme, tuple(OAEP_HASHES), "sha256"),
        gcm_iv=cast(GcmIv, _choice(settings, "gcm_iv", scheme, ("host", "hsm"), preset.gcm_iv)),
        max_sessions=_max_sessions(settings.get("max_sessions"), scheme),
    )
