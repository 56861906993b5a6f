"""The ``[providers.gcp-kms]`` settings, declared once and validated into a frozen record.

Every key is optional::

    [providers.gcp-kms]
    credentials_file = "/etc/keys/sa.json"  # else Application Default Credentials
    transport = "grpc"                      # or "rest" (HTTP/1.1 + JSON)
    api_endpoint = "cloudkms.europe-west1.rep.googleapis.com"   # regional / private endpoint
    emulator_host = "127.0.0.1:9090"        # tests: insecure channel, anonymous credentials
    timeout = 30.0                          # seconds per attempt
    retry_initial = 0.1                     # seconds before the first retry
    retry_maximum = 10.0                    # longest pause between retries
    retry_multiplier = 2.0                  # pause growth per retry
    retry_deadline = 60.0                   # seconds for a call and all its retries (0: none)
    key_cache_ttl = 30.0                    # seconds an RSA public key / primary is trusted

Values may be strings (``KMSENVELOPE_PROVIDERS__GCP_KMS__EMULATOR_HOST=127.0.0.1:9090``);
unknown keys, and keys that another setting would make the provider ignore, are errors.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kmsenvelope.settings import ParsedSettings, Setting, SettingsSchema

from .uri import SCHEME

__all__ = ["SETTINGS_SCHEMA", "GcpSettings", "is_loopback", "parse_settings"]

Transport = Literal["grpc", "rest"]
_SECONDS = "seconds"
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")

SETTINGS_SCHEMA = SettingsSchema(
    SCHEME,
    (
        Setting(
            "credentials_file",
            "path",
            help="service account / external account JSON (default: Application Default "
            "Credentials)",
        ),
        Setting(
            "transport",
            "string",
            "grpc",
            choices=("grpc", "rest"),
            help="grpc (default) or rest",
        ),
        Setting("api_endpoint", "string", help="Cloud KMS endpoint HOST[:PORT] (TLS)"),
        Setting(
            "emulator_host",
            "string",
            help="HOST:PORT of a KMS emulator: insecure channel, anonymous credentials",
        ),
        Setting(
            "allow_remote_emulator",
            "boolean",
            False,
            help="allow an emulator_host other than loopback (data keys cross it in clear)",
        ),
        Setting(
            "timeout", "number", 30.0, minimum=0, maximum=600, exclusive_minimum=True, help=_SECONDS
        ),
        Setting("retry_initial", "number", 0.1, minimum=0, maximum=60, exclusive_minimum=True),
        Setting("retry_maximum", "number", 10.0, minimum=0, maximum=300, exclusive_minimum=True),
        Setting("retry_multiplier", "number", 2.0, minimum=1, maximum=10),
        Setting(
            "retry_deadline",
            "number",
            60.0,
            minimum=0,
            maximum=3600,
            help="seconds for one call and its retries (0: no retries)",
        ),
        Setting(
            "key_cache_ttl",
            "number",
            30.0,
            minimum=0,
            maximum=86400,
            help="seconds an RSA public key, a resolved version or the primary is trusted",
        ),
    ),
)
"""The ``[providers.gcp-kms]`` settings, declared once."""


@dataclass(frozen=True, slots=True)
class GcpSettings:
    """Validated settings (hashable: it keys the client cache). Nothing here is secret: a
    credentials file is named, never read into the settings."""

    credentials_file: str | None = None
    transport: Transport = "grpc"
    api_endpoint: str | None = None
    emulator_host: str | None = None
    timeout: float = 30.0
    retry_initial: float = 0.1
    retry_maximum: float = 10.0
    retry_multiplier: float = 2.0
    retry_deadline: float = 60.0
    key_cache_ttl: float = 30.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, an IPv4 address or a bracketed IPv6 address) is this machine."""
    bare = host.strip("[]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def _emulator_host(values: ParsedSettings) -> str | None:
    host_port: str | None = values["emulator_host"]
    if host_port is None:
        return None
    found = _HOST_PORT.fullmatch(host_port)
    if found is None or not 0 < int(found.group("port")) < 65536:
        raise values.error(
            "emulator_host", f"must be HOST:PORT (e.g. 127.0.0.1:9090), not {host_port!r}"
        )
    for other in ("credentials_file", "api_endpoint"):
        if other in values.given:
            raise values.error(
                other,
                "is not used with emulator_host (an emulator gets an insecure channel and "
                "anonymous credentials); remove one of them",
            )
    if not is_loopback(found.group("host")) and not values["allow_remote_emulator"]:
        raise values.error(
            "emulator_host",
            f"names {found.group('host')}, which is not this machine: data keys would cross "
            "the network unencrypted; set allow_remote_emulator = true for an emulator you trust",
        )
    return host_port


def parse_settings(raw: Mapping[str, Any]) -> GcpSettings:
    """Validate a ``[providers.gcp-kms]`` table; ``ConfigError`` naming the bad setting."""
    values = SETTINGS_SCHEMA.parse(raw)
    credentials_file: str | None = values["credentials_file"]
    if credentials_file is not None and not Path(credentials_file).is_file():
        raise values.error("credentials_file", f"{credentials_file} is not a readable file")
    endpoint: str | None = values["api_endpoint"]
    if endpoint is not None and ("://" in endpoint or "/" in endpoint):
        raise values.error(
            "api_endpoint", f"must be HOST or HOST:PORT (TLS is always used), not {endpoint!r}"
        )
    if values["retry_maximum"] < values["retry_initial"]:
        raise values.error(
            "retry_maximum", f"must not be less than retry_initial ({values['retry_initial']:g})"
        )
    return GcpSettings(
        credentials_file=credentials_file,
        transport=values["transport"],
        api_endpoint=endpoint,
        emulator_host=_emulator_host(values),
        timeout=values["timeout"],
        retry_initial=values["retry_initial"],
        retry_maximum=values["retry_maximum"],
        retry_multiplier=values["retry_multiplier"],
        retry_deadline=values["retry_deadline"],
        key_cache_ttl=values["key_cache_ttl"],
    )
