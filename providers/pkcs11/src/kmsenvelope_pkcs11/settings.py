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

The settings are declared once per scheme (``Preset.schema``, a
:class:`kmsenvelope.settings.SettingsSchema`) and checked by the core's rules. ``module`` loads
code, so it (and ``KMSENVELOPE_PKCS11_MODULE``) must be an absolute path. Every problem is a
``ConfigError`` naming the setting. The PIN is never shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from kmsenvelope.errors import ConfigError
from kmsenvelope.settings import ParsedSettings, Setting, SettingsSchema

from .mechanisms import KWP_MECHANISMS, OAEP_HASHES, is_kwp_mechanism

__all__ = ["COMMON_SETTINGS", "AesMode", "GcmIv", "Pkcs11Settings", "Preset", "load_settings"]

AesMode = Literal["gcm", "kwp"]
GcmIv = Literal["host", "hsm"]

MODULE_ENV = "KMSENVELOPE_PKCS11_MODULE"
PIN_ENV = "KMSENVELOPE_PKCS11_PIN"

COMMON_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "module",
        "path",
        loads_code=True,
        help="the PKCS#11 library (absolute path; or KMSENVELOPE_PKCS11_MODULE)",
    ),
    Setting("pin", "string", secret=True, help="user PIN (better: KMSENVELOPE_PKCS11_PIN)"),
    Setting("token", "string", help="token label used when a URI has no token= attribute"),
    Setting(
        "aes_mechanism",
        "string",
        "gcm",
        choices=("gcm", "kwp"),
        help="AES-GCM (context as AAD) or RFC 5649 key wrap",
    ),
    Setting("kwp_mechanism", "any", help="CKM_* number or name of AES key wrap with padding"),
    Setting("oaep_hash", "string", "sha256", choices=tuple(OAEP_HASHES), help="RSA-OAEP hash"),
    Setting("gcm_iv", "string", choices=("host", "hsm"), help="who picks AES-GCM IVs"),
    Setting("max_sessions", "integer", 4, minimum=1, maximum=64, help="pooled sessions per token"),
)
"""The settings every PKCS#11 scheme takes (a preset may add its own)."""


@dataclass(frozen=True, slots=True)
class Preset:
    """What differs between ``pkcs11`` and a vendor preset such as ``aws-cloudhsm``."""

    scheme: str
    module: str | None = None
    module_env: str | None = MODULE_ENV
    kwp_mechanism: int = 0x210A
    gcm_iv: GcmIv = "host"
    extra_settings: tuple[Setting, ...] = ()
    # (settings, env) -> (pin, where it came from) or None; the default reads 'pin' / PIN_ENV.
    credentials: Callable[[Mapping[str, Any], Mapping[str, str]], tuple[str, str] | None] | None = (
        None
    )

    @property
    def schema(self) -> SettingsSchema:
        """The ``[providers.SCHEME]`` settings of this scheme, declared once."""
        return SettingsSchema(self.scheme, COMMON_SETTINGS + self.extra_settings)


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


def _kwp_mechanism(values: ParsedSettings, default: int) -> int:
    value = values["kwp_mechanism"]
    if value is None:
        return default
    number: int
    if isinstance(value, bool):
        raise values.error("kwp_mechanism", "must be a CKM_* number such as 0x210A")
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
                raise values.error(
                    "kwp_mechanism",
                    f"is {value!r}; expected a number such as 0x210A or one of "
                    f"{', '.join(sorted(KWP_MECHANISMS))}",
                ) from None
    else:
        raise values.error("kwp_mechanism", "must be a CKM_* number such as 0x210A")
    if not is_kwp_mechanism(number):
        raise values.error(
            "kwp_mechanism",
            f"is {number:#x}, which is not an AES key-wrap-with-padding mechanism "
            "(standard: 0x210A CKM_AES_KEY_WRAP_PAD, 0x210B CKM_AES_KEY_WRAP_KWP; or a "
            "vendor-defined value >= 0x80000000)",
        )
    return number


def _default_credentials(
    values: ParsedSettings, env: Mapping[str, str], scheme: str
) -> tuple[str, str] | None:
    pin: str | None = values["pin"]
    if pin is not None:
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
    schema = preset.schema
    values = schema.parse(settings)

    module: str | None = values["module"]
    module_source = f"setting 'module' in [providers.{scheme}]"
    if module is None and preset.module_env and env.get(preset.module_env):
        module_source = f"environment variable {preset.module_env}"
        module = schema.parse_value("module", env[preset.module_env], module_source)
    if module is None and preset.module is not None:
        module, module_source = preset.module, f"the {scheme} default"
    if module is None:
        also = f" or {preset.module_env}" if preset.module_env else ""
        raise ConfigError(
            f"no PKCS#11 module configured for {scheme}: set 'module' in [providers.{scheme}]"
            f"{also} (e.g. /usr/lib/softhsm/libsofthsm2.so)"
        )

    if preset.credentials is not None:
        found = preset.credentials(values, env)
    else:
        found = _default_credentials(values, env, scheme)
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
        token=values["token"],
        aes_mechanism=cast(AesMode, values["aes_mechanism"]),
        kwp_mechanism=_kwp_mechanism(values, preset.kwp_mechanism),
        oaep_hash=values["oaep_hash"],
        gcm_iv=cast(GcmIv, values["gcm_iv"] or preset.gcm_iv),
        max_sessions=values["max_sessions"],
    )
