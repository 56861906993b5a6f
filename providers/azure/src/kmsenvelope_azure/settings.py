"""The ``[providers.azure-kv]`` settings, validated into one frozen record.

Values may come from TOML (typed) or from ``KMSENVELOPE_PROVIDERS__AZURE_KV__<KEY>`` environment
variables (strings), so booleans and numbers are accepted in both forms. The settings are
declared once in ``SETTINGS_SCHEMA`` and checked by the core's rules (:mod:`kmsenvelope.settings`);
unknown keys, and keys that the chosen credential would silently ignore, are configuration errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmsenvelope.settings import ParsedSettings, Setting, SettingsSchema

from .algorithms import DEFAULT_OCT_ALGORITHM, DEFAULT_RSA_ALGORITHM, OCT_ALGORITHMS, RSA_1_5
from .algorithms import RSA_ALGORITHMS as _RSA

__all__ = ["CREDENTIAL_KINDS", "SETTINGS_SCHEMA", "AzureSettings", "parse_settings"]

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

_SECONDS = "seconds"
SETTINGS_SCHEMA = SettingsSchema(
    "azure-kv",
    (
        Setting(
            "credential",
            "string",
            "default",
            choices=CREDENTIAL_KINDS,
            help="which azure-identity credential authenticates",
        ),
        Setting("tenant_id", "string", help="Entra ID tenant (or AZURE_TENANT_ID)"),
        Setting("client_id", "string", help="application or managed identity client id"),
        Setting("client_secret", "string", secret=True, help="for credential = 'client-secret'"),
        Setting("certificate_path", "path", help="PEM/PKCS#12 file, credential = 'certificate'"),
        Setting("certificate_password", "string", secret=True, help="the certificate's password"),
        Setting("token_file_path", "path", help="federated token file (workload identity)"),
        Setting("authority_host", "string", help="Entra ID authority (https URL or host name)"),
        Setting("disable_instance_discovery", "boolean", False),
        Setting("additionally_allowed_tenants", "list", (), help="tenant ids"),
        Setting("verify_challenge_resource", "boolean", True),
        Setting("ca_bundle", "path", help="CA bundle for TLS to the vault"),
        Setting("algorithm", "string", help="RSA wrap algorithm (default RSA-OAEP-256)"),
        Setting(
            "oct_algorithm",
            "string",
            help="oct-HSM wrap algorithm: A256GCM (default, context as AAD) or A256KW",
        ),
        Setting("allow_rsa1_5", "boolean", False, help="accept RSA1_5 (legacy data only)"),
        Setting("wrap_locally", "boolean", True, help="wrap with RSA public keys locally"),
        Setting("key_cache_ttl", "number", 30.0, minimum=0, help=_SECONDS),
        Setting("retry_total", "integer", 4, minimum=0, maximum=20),
        Setting("retry_backoff_factor", "number", 0.5, minimum=0, help=_SECONDS),
        Setting("retry_backoff_max", "number", 8.0, minimum=0, help=_SECONDS),
        Setting("retry_timeout", "number", 60.0, minimum=0.001, help=_SECONDS),
        Setting("connection_timeout", "number", 10.0, minimum=0.001, help=_SECONDS),
        Setting("read_timeout", "number", 30.0, minimum=0.001, help=_SECONDS),
        Setting("api_version", "string", help="Key Vault REST API version"),
    ),
)
"""The ``[providers.azure-kv]`` settings, declared once."""
KNOWN_KEYS = frozenset(SETTINGS_SCHEMA.names)


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


def _file(values: ParsedSettings, key: str) -> str | None:
    path: str | None = values[key]
    if path is not None and not Path(path).is_file():
        raise values.error(key, f"{path} is not a readable file")
    return path


def _algorithm(values: ParsedSettings, allow_rsa1_5: bool) -> tuple[str, str]:
    rsa = values["algorithm"] or DEFAULT_RSA_ALGORITHM
    oct_ = values["oct_algorithm"] or DEFAULT_OCT_ALGORITHM
    if rsa.upper() in OCT_ALGORITHMS:
        raise values.error(
            "algorithm",
            f"{rsa} is a symmetric (oct-HSM) algorithm; set oct_algorithm = {rsa!r} instead",
        )
    if rsa.upper() not in _RSA:
        raise values.error(
            "algorithm", f"is an unsupported RSA wrap algorithm {rsa!r} (use RSA-OAEP-256)"
        )
    if rsa.upper() == RSA_1_5 and not allow_rsa1_5:
        raise values.error(
            "algorithm",
            "RSA1_5 (PKCS#1 v1.5) is refused: it is not a safe key-wrap padding; "
            "set allow_rsa1_5 = true only to read or write legacy data",
        )
    if oct_.upper() not in OCT_ALGORITHMS:
        allowed = ", ".join(sorted(OCT_ALGORITHMS))
        raise values.error(
            "oct_algorithm", f"is an unsupported symmetric wrap algorithm {oct_!r} ({allowed})"
        )
    return rsa.upper(), oct_.upper()


def _api_version(values: ParsedSettings) -> str | None:
    version: str | None = values["api_version"]
    if version is None:
        return None
    from azure.keyvault.keys import ApiVersion  # the SDK loads on first use, not with the plugin

    known = [v.value for v in ApiVersion]
    if version not in known:
        raise values.error(
            "api_version", f"{version!r} is not supported (known: {', '.join(known)})"
        )
    return version


def parse_settings(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> AzureSettings:
    """Validate the ``[providers.azure-kv]`` table; raise ``ConfigError`` naming the bad key.

    ``env`` (default ``os.environ``) supplies ``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID``,
    ``AZURE_CLIENT_SECRET``, ``AZURE_CLIENT_CERTIFICATE_PATH`` and
    ``AZURE_FEDERATED_TOKEN_FILE`` when the chosen credential needs them and the table does not.
    """
    env = os.environ if env is None else env
    values = SETTINGS_SCHEMA.parse(raw)
    credential: str = values["credential"]
    for key in sorted((values.given & _IDENTITY_KEYS) - _CREDENTIAL_SETTINGS[credential]):
        users = [k for k in CREDENTIAL_KINDS if key in _CREDENTIAL_SETTINGS[k]]
        raise values.error(
            key,
            f"is not used by credential = {credential!r} (it applies to: {', '.join(users)}); "
            "set the credential that should use it",
        )

    def from_env(key: str, var: str) -> str | None:
        given: str | None = values[key]
        return given or (env.get(var) or None)

    tenant_id = client_id = client_secret = certificate_path = token_file_path = None
    if credential in ("client-secret", "certificate", "workload-identity"):
        tenant_id = from_env("tenant_id", "AZURE_TENANT_ID")
        client_id = from_env("client_id", "AZURE_CLIENT_ID")
        if not tenant_id:
            raise values.error("tenant_id", f"is required for credential = {credential!r}")
        if not client_id:
            raise values.error("client_id", f"is required for credential = {credential!r}")
    else:
        client_id = values["client_id"]
    if credential == "client-secret":
        client_secret = from_env("client_secret", "AZURE_CLIENT_SECRET")
        if not client_secret:
            raise values.error("client_secret", "is required for credential = 'client-secret'")
    if credential == "certificate":
        certificate_path = _file(values, "certificate_path") or (
            env.get("AZURE_CLIENT_CERTIFICATE_PATH") or None
        )
        if not certificate_path:
            raise values.error("certificate_path", "is required for credential = 'certificate'")
    if credential == "workload-identity":
        token_file_path = _file(values, "token_file_path") or (
            env.get("AZURE_FEDERATED_TOKEN_FILE") or None
        )
        if not token_file_path:
            raise values.error(
                "token_file_path", "is required for credential = 'workload-identity'"
            )

    authority_host: str | None = values["authority_host"]
    if authority_host is not None:
        if authority_host.lower().startswith("http://"):
            raise values.error("authority_host", "must be an https URL or a host name")
        authority_host = authority_host.rstrip("/")

    allow_rsa1_5: bool = values["allow_rsa1_5"]
    algorithm, oct_algorithm = _algorithm(values, allow_rsa1_5)
    return AzureSettings(
        credential=credential,
        tenant_id=tenant_id,
        client_id=client_id,
        client_secret=client_secret,
        certificate_path=certificate_path,
        certificate_password=values["certificate_password"],
        token_file_path=token_file_path,
        authority_host=authority_host,
        disable_instance_discovery=values["disable_instance_discovery"],
        additionally_allowed_tenants=values["additionally_allowed_tenants"],
        verify_challenge_resource=values["verify_challenge_resource"],
        ca_bundle=_file(values, "ca_bundle"),
        algorithm=algorithm,
        oct_algorithm=oct_algorithm,
        allow_rsa1_5=allow_rsa1_5,
        wrap_locally=values["wrap_locally"],
        key_cache_ttl=values["key_cache_ttl"],
        retry_total=values["retry_total"],
        retry_backoff_factor=values["retry_backoff_factor"],
        retry_backoff_max=values["retry_backoff_max"],
        retry_timeout=values["retry_timeout"],
        connection_timeout=values["connection_timeout"],
        read_timeout=values["read_timeout"],
        api_version=_api_version(values),
    )
