"""The ``[providers.aws-kms]`` settings table, validated.

Every key is optional; what is not set comes from the standard AWS chain (environment,
shared config and credentials files, ``AWS_ENDPOINT_URL_KMS``, instance/role credentials)::

    [providers.aws-kms]
    region = "eu-west-1"          # for key ids and aliases; a region in an ARN wins
    profile = "prod"              # a profile of ~/.aws/config
    endpoint_url = "https://vpce-0123-abcd.kms.eu-west-1.vpce.amazonaws.com"
    max_attempts = 5              # per call, including the first (1 = no retries)
    connect_timeout = 5.0         # seconds
    read_timeout = 15.0           # seconds
    backoff_base = 0.1            # seconds; retry n sleeps uniform(0, min(max, base * 2**n))
    backoff_max = 5.0             # seconds
    allow_http = false            # plain-HTTP endpoints other than loopback (emulators only)
    key_cache_ttl = 30.0          # seconds an RSA key's state is trusted for local wraps

Values may also be strings (``KMSENVELOPE_PROVIDERS__AWS_KMS__MAX_ATTEMPTS=3``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kmsenvelope.errors import ConfigError

__all__ = ["ProviderSettings"]

_TABLE = "[providers.aws-kms]"
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _fail(key: str, problem: str, value: Any) -> ConfigError:
    return ConfigError(f"{_TABLE} {key}: {problem}, got {value!r}")


def _text(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, "must be a non-empty string", value)
    return value.strip()


def _int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(key, f"must be an integer from {low} to {high}", value)
    return value


def _float(key: str, value: Any, low: float, high: float, *, allow_low: bool) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _fail(key, "must be a number of seconds", value) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, "must be a number of seconds", value)
    number = float(value)
    above_low = low <= number if allow_low else low < number
    if not (math.isfinite(number) and above_low and number <= high):
        bound = "at least" if allow_low else "more than"
        raise _fail(key, f"must be {bound} {low:g} and at most {high:g} seconds", value)
    return number


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _fail(key, "must be true or false", value)


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Validated provider settings with secure defaults."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    allow_http: bool = False
    # RSA keys wrap locally with the public key; their KeyState (DescribeKey) is checked again
    # when this many seconds have passed, so a disabled key stops wrapping within that time.
    key_cache_ttl: float = 30.0

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> ProviderSettings:
        """Validate a settings table; unknown keys are an error (they are usually typos)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(
                f"{_TABLE}: unknown setting {unknown[0]!r} (allowed: {', '.join(sorted(known))})"
            )
        defaults = cls()
        get = settings.get
        endpoint = _text("endpoint_url", get("endpoint_url"))
        if endpoint is not None and not endpoint.lower().startswith(("https://", "http://")):
            raise _fail("endpoint_url", "must be an http(s):// URL", endpoint)
        base = _float(
            "backoff_base", get("backoff_base", defaults.backoff_base), 0.0, 60.0, allow_low=True
        )
        cap = _float(
            "backoff_max", get("backoff_max", defaults.backoff_max), 0.0, 300.0, allow_low=True
        )
        if cap < base:
            raise _fail("backoff_max", f"must not be less than backoff_base ({base:g})", cap)
        return cls(
            region=_text("region", get("region")),
            profile=_text("profile", get("profile")),
            endpoint_url=endpoint,
            max_attempts=_int("max_attempts", get("max_attempts", defaults.max_attempts), 1, 20),
            connect_timeout=_float(
                "connect_timeout",
                get("connect_timeout", defaults.connect_timeout),
                0.0,
                300.0,
                allow_low=False,
            ),
            read_timeout=_float(
                "read_timeout",
                get("read_timeout", defaults.read_timeout),
                0.0,
                300.0,
                allow_low=False,
            ),
            backoff_base=base,
            backoff_max=cap,
            allow_http=_bool("allow_http", get("allow_http", defaults.allow_http)),
            key_cache_ttl=_float(
                "key_cache_ttl",
                get("key_cache_ttl", defaults.key_cache_ttl),
                0.0,
                86400.0,
                allow_low=True,
            ),
        )
