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

Values may also be strings (``KMSENVELOPE_PROVIDERS__AWS_KMS__MAX_ATTEMPTS=3``). The settings
are declared once in ``SETTINGS_SCHEMA`` and checked by the core's rules
(:mod:`kmsenvelope.settings`). The region is the ``region`` setting, else ``AWS_REGION``, else
what boto3 finds (``AWS_DEFAULT_REGION``, the profile's region): boto3 itself does not read
``AWS_REGION``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kmsenvelope.settings import Setting, SettingsSchema

__all__ = ["SETTINGS_SCHEMA", "ProviderSettings"]

REGION_ENV = "AWS_REGION"

SETTINGS_SCHEMA = SettingsSchema(
    "aws-kms",
    (
        Setting("region", "string", help="region for key ids and aliases (an ARN's region wins)"),
        Setting("profile", "string", help="a profile of ~/.aws/config"),
        Setting("endpoint_url", "string", help="KMS endpoint (https://; VPC endpoint, emulator)"),
        Setting(
            "max_attempts",
            "integer",
            5,
            minimum=1,
            maximum=20,
            help="attempts per call, including the first (1 = no retries)",
        ),
        Setting(
            "connect_timeout",
            "number",
            5.0,
            minimum=0,
            maximum=300,
            exclusive_minimum=True,
            help="seconds",
        ),
        Setting(
            "read_timeout",
            "number",
            15.0,
            minimum=0,
            maximum=300,
            exclusive_minimum=True,
            help="seconds",
        ),
        Setting("backoff_base", "number", 0.1, minimum=0, maximum=60, help="seconds"),
        Setting("backoff_max", "number", 5.0, minimum=0, maximum=300, help="seconds"),
        Setting(
            "allow_http",
            "boolean",
            False,
            help="allow plain-HTTP endpoints other than loopback (emulators only)",
        ),
        Setting(
            "key_cache_ttl",
            "number",
            30.0,
            minimum=0,
            maximum=86400,
            help="seconds an RSA key's state is trusted for local wraps",
        ),
    ),
)
"""The ``[providers.aws-kms]`` settings, declared once."""


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
    def from_mapping(
        cls, settings: Mapping[str, Any], env: Mapping[str, str] | None = None
    ) -> ProviderSettings:
        """Validate a settings table; unknown keys are an error (they are usually typos).

        Without a ``region`` setting, ``AWS_REGION`` from ``env`` (default ``os.environ``)
        gives the region; failing both, the client's own chain decides later.
        """
        env = os.environ if env is None else env
        values = SETTINGS_SCHEMA.parse(settings)
        endpoint = values["endpoint_url"]
        if endpoint is not None and not endpoint.lower().startswith(("https://", "http://")):
            raise values.error("endpoint_url", f"must be an http(s):// URL, not {endpoint!r}")
        base, cap = values["backoff_base"], values["backoff_max"]
        if cap < base:
            raise values.error("backoff_max", f"must not be less than backoff_base ({base:g})")
        region = values["region"]
        if region is None and env.get(REGION_ENV, "").strip():
            region = SETTINGS_SCHEMA.parse_value(
                "region", env[REGION_ENV], f"environment variable {REGION_ENV}"
            )
        return cls(
            region=region,
            profile=values["profile"],
            endpoint_url=endpoint,
            max_attempts=values["max_attempts"],
            connect_timeout=values["connect_timeout"],
            read_timeout=values["read_timeout"],
            backoff_base=base,
            backoff_max=cap,
            allow_http=values["allow_http"],
            key_cache_ttl=values["key_cache_ttl"],
        )
