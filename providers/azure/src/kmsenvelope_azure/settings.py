"""The ``[providers.azure-kv]`` settings, validated into one frozen record.

Values may come from TOML (typed) or from ``KMSENVELOPE_PROVIDERS__AZURE_KV__<KEY>`` environment
variables (strings), so booleans and numbers are accepted in both forms. Unknown keys, and keys
that the chosen credential would silently ignore, are configuration errors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.keyvault.keys import ApiVersion

from kmsenvelope import ConfigError

from .algorithms import DEFAULT_OCT_ALGORITHM, DEFAULT_RSA_ALGORITHM, OCT_ALGORITHMS, RSA_1_5
from .algorithms import RSA_ALGORITHMS as _RSA

__all__ = ["CREDENTIAL_KINDS", "AzureSettings", "parse_settings"]

TABLE = "providers.azure-kv"

CREDENTIAL_KINDS = (
    "default",
    "client-secret",
    "certificate",
    "managed-identity",
    "workload-identity",
)

# Which identity settings each credential kind uses (the rest are refused, not ignored).
_CREDENTIAL_SETTINGS: dict[str, frozenset[str]] = {
    "default": frozenset(
        {
            "client_id",
            "authority_host",
            "disable_instance_discovery",
            "additionally_allowed_tenants",
        }
    ),
    "client-secret": frozenset(
        {
            "tenant_id",
            "client_id",
            "client_secret",
            "authority_host",
            "disable_instance_discovery",
            "additionally_allowed_tenants",
        }
    ),
    "certificate": frozenset(
        {
            "tenant_id",
            "client_id",
            "certificate_path",
            "certificate_password",
            "authority_host",
            "disable_instance_discovery",
            "additionally_allowed_tenants",
        }
    ),
    "managed-identity": frozenset({"client_id"}),
    "workload-identity": frozenset(
        {
            "tenant_id",
            "client_id",
            "token_file_path",
            "authority_host",
            "disable_instance_discovery",
            "additionally_allowed_tenants",
        }
    ),
}
_IDENTITY_KEYS = frozenset().union(*_CREDENTIAL_SETTINGS.values())

_OTHER_KEYS = frozenset(
    {
        "credential",
        "verify_challenge_resource",
        "ca_bundle",
        "algorithm",
        "oct_algorithm",
        "allow_rsa1_5",
        "wrap_locally",
        "key_cache_ttl",
        "retry_total",
        "retry_backoff_factor",
        "retry_backoff_max",
        "retry_timeout",
        "connection_timeout",
        "read_timeout",
        "api_version",
    }
)
KNOWN_KEYS = _IDENTITY_KEYS | _OTHER_KEYS

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True, slots=True)
class AzureSettings:
    """Validated provider settings. Hashable, so it can key the client cache.

    Secrets are excluded from ``repr``.
    """

    credential: str = "default"
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate_path: str | None = None
    certificate_password: str | None = field(default=None, repr=False)
    token_file_path: str | None = None
    authority_host: str | None = None
    disable_instance_discovery: bool = False
    additionally_allowed_tenants: tuple[str, ...] = ()
    verify_challenge_resource: bool = True
    ca_bundle: str | None = None
    algorithm: str = DEFAULT_RSA_ALGORITHM
    oct_algorithm: str = DEFAULT_OCT_ALGORITHM
    allow_rsa1_5: bool = False
    wrap_locally: bool = True
    key_cache_ttl: float = 30.0
    retry_total: int = 4
    retry_backoff_factor: float = 0.5
    retry_backoff_max: float = 8.0
    retry_timeout: float = 60.0
    connection_timeout: float = 10.0
    read_timeout: float = 30.0
    api_version: str | None = None


def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(f"[{TABLE}] {key}: {problem}")


def _str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, "must be a non-empty string")
    return value.strip()


def _bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _fail(key, f"must be true or false, not {value!r}")


def _number(raw: Mapping[str, Any], key: str, default: float, *, minimum: float = 0.0) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise _fail(key, f"must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(key, f"must be a number, not {value!r}") from None
    if not math.isfinite(number) or number < minimum:
        raise _fail(key, f"must be a number >= {minimum:g}, not {value!r}")
    return number


def _int(raw: Mapping[str, Any], key: str, default: int, *, maximum: int) -> int:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise _fail(key, f"must be a whole number, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _fail(key, f"must be a whole number, not {value!r}") from None
    if isinstance(value, float) and value != number:
        raise _fail(key, f"must be a whole number, not {value!r}")
    if not 0 <= number <= maximum:
        raise _fail(key, f"must be between 0 and {maximum}, not {value!r}")
    return number


def _names(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise _fail(key, "must be a list of tenant ids (or a comma-separated string)")
    return tuple(i.strip() for i in items if i.strip())


def _file(raw: Mapping[str, Any], key: str) -> str | None:
    path = _str(raw, key)
    if path is not None and not Path(path).expanduser().is_file():
        raise _fail(key, f"{path} is not a readable file")
    return str(Path(path).expanduser()) if path is not None else None


def _algorithm(raw: Mapping[str, Any], allow_rsa1_5: bool) -> tuple[str, str]:
    rsa = _str(raw, "algorithm") or DEFAULT_RSA_ALGORITHM
    oct_ = _str(raw, "oct_algorithm") or DEFAULT_OCT_ALGORITHM
    if rsa.upper() in OCT_ALGORITHMS:
        raise _fail(
            "algorithm",
            f"{rsa} is a symmetric (oct-HSM) algorithm; set oct_algorithm = {rsa!r} instead",
        )
    if rsa.upper() not in _RSA:
        raise _fail("algorithm", f"unsupported RSA wrap algorithm {rsa!r} (use RSA-OAEP-256)")
    if rsa.upper() == RSA_1_5 and not allow_rsa1_5:
        raise _fail(
            "algorithm",
            "RSA1_5 (PKCS#1 v1.5) is refused: it is not a safe key-wrap padding; "
            "set allow_rsa1_5 = true only to read or write legacy data",
        )
    if oct_.upper() not in OCT_ALGORITHMS:
        allowed = ", ".join(sorted(OCT_ALGORITHMS))
        raise _fail("oct_algorithm", f"unsupported symmetric wrap algorithm {oct_!r} ({allowed})")
    return rsa.upper(), oct_.upper()


def _api_version(raw: Mapping[str, Any]) -> str | None:
    version = _str(raw, "api_version")
    known = [v.value for v in ApiVersion]
    if version is not None and version not in known:
        raise _fail("api_version", f"{version!r} is not supported (known: {', '.join(known)})")
    return version


def parse_settings(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> AzureSettings:
    """Validate the ``[providers.azure-kv]`` table; raise ``ConfigError`` naming the bad key.

    ``env`` (default ``os.environ``) supplies ``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID``,
    ``AZURE_CLIENT_SECRET``, ``AZURE_CLIENT_CERTIFICATE_PATH`` and
    ``AZURE_FEDERATED_TOKEN_FILE`` when the chosen credential needs them and the table does not.
    """
    env = os.environ if env is None else env
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise _fail(unknown[0], f"unknown setting (known: {', '.join(sorted(KNOWN_KEYS))})")

    credential = (_str(raw, "credential") or "default").lower()
    if credential not in CREDENTIAL_KINDS:
        kinds = ", ".join(CREDENTIAL_KINDS)
        raise _fail("credential", f"must be one of {kinds}, not {credential!r}")
    for key in sorted((set(raw) & _IDENTITY_KEYS) - _CREDENTIAL_SETTINGS[credential]):
        users = [k for k in CREDENTIAL_KINDS if key in _CREDENTIAL_SETTINGS[k]]
        raise _fail(
            key,
            f"is not used by credential = {credential!r} (it applies to: {', '.join(users)}); "
            "set the credential that should use it",
        )

    def from_env(key: str, var: str) -> str | None:
        return _str(raw, key) or (env.get(var) or None)

    tenant_id = client_id = client_secret = certificate_path = token_file_path = None
    if credential in ("client-secret", "certificate", "workload-identity"):
        tenant_id = from_env("tenant_id", "AZURE_TENANT_ID")
        client_id = from_env("client_id", "AZURE_CLIENT_ID")
        if not tenant_id:
            raise _fail("tenant_id", f"is required for credential = {credential!r}")
        if not client_id:
            raise _fail("client_id", f"is required for credential = {credential!r}")
    else:
        client_id = _str(raw, "client_id")
    if credential == "client-secret":
        client_secret = from_env("client_secret", "AZURE_CLIENT_SECRET")
        if not client_secret:
            raise _fail("client_secret", "is required for credential = 'client-secret'")
    if credential == "certificate":
        certificate_path = _file(raw, "certificate_path") or (
            env.get("AZURE_CLIENT_CERTIFICATE_PATH") or None
        )
        if not certificate_path:
            raise _fail("certificate_path", "is required for credential = 'certificate'")
    if credential == "workload-identity":
        token_file_path = _file(raw, "token_file_path") or (
            env.get("AZURE_FEDERATED_TOKEN_FILE") or None
        )
        if not token_file_path:
            raise _fail("token_file_path", "is required for credential = 'workload-identity'")

    authority_host = _str(raw, "authority_host")
    if authority_host is not None:
        if authority_host.lower().startswith("http://"):
            raise _fail("authority_host", "must be an https URL or a host name")
        authority_host = authority_host.rstrip("/")

    allow_rsa1_5 = _bool(raw, "allow_rsa1_5", False)
    algorithm, oct_algorithm = _algorithm(raw, allow_rsa1_5)
    return AzureSettings(
        credential=credential,
        tenant_id=tenant_id,
        client_id=client_id,
        client_secret=client_secret,
        certificate_path=certificate_path,
        certificate_password=_str(raw, "certificate_password"),
        token_file_path=token_file_path,
        authority_host=authority_host,
        disable_instance_discovery=_bool(raw, "disable_instance_discovery", False),
        additionally_allowed_tenants=_names(raw, "additionally_allowed_tenants"),
        verify_challenge_resource=_bool(raw, "verify_challenge_resource", True),
        ca_bundle=_file(raw, "ca_bundle"),
        algorithm=algorithm,
        oct_algorithm=oct_algorithm,
        allow_rsa1_5=allow_rsa1_5,
        wrap_locally=_bool(raw, "wrap_locally", True),
        key_cache_ttl=_number(raw, "key_cache_ttl", 30.0),
        retry_total=_int(raw, "retry_total", 4, maximum=20),
        retry_backoff_factor=_number(raw, "retry_backoff_factor", 0.5),
        retry_backoff_max=_number(raw, "retry_backoff_max", 8.0),
        retry_timeout=_number(raw, "retry_timeout", 60.0, minimum=0.001),
        connection_timeout=_number(raw, "connection_timeout", 10.0, minimum=0.001),
        read_timeout=_number(raw, "read_timeout", 30.0, minimum=0.001),
        api_version=_api_version(raw),
    )
