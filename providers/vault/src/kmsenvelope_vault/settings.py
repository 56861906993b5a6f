"""The ``[providers.vault-transit]`` settings, validated into one frozen record.

Values come from TOML or from ``KMSENVELOPE_PROVIDERS__VAULT_TRANSIT__<KEY>`` variables and are
checked by the core's rules (:mod:`kmsenvelope.settings`). Like the Vault CLI, the provider also
reads ``VAULT_TOKEN`` (it wins over the token file, ``~/.vault-token`` unless ``token_file`` says
otherwise), ``VAULT_NAMESPACE`` and ``VAULT_CACERT`` when the table does not set ``namespace`` or
``ca_bundle``. ``VAULT_ADDR`` is never read: the server is the one the key URI names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmsenvelope.settings import ParsedSettings, Setting, SettingsSchema

__all__ = ["AUTH_METHODS", "SETTINGS_SCHEMA", "VaultSettings", "parse_settings"]

AUTH_METHODS = ("token", "approle", "kubernetes")
KUBERNETES_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105

# Which settings each auth method uses (the others are refused, not silently ignored).
_AUTH_SETTINGS: dict[str, frozenset[str]] = {
    "token": frozenset({"token_file"}),
    "approle": frozenset({"role_id", "secret_id", "secret_id_file", "auth_mount"}),
    "kubernetes": frozenset({"role", "kubernetes_token_file", "auth_mount"}),
}
_AUTH_KEYS = frozenset().union(*_AUTH_SETTINGS.values())
_SECONDS = "seconds"

SETTINGS_SCHEMA = SettingsSchema(
    "vault-transit",
    (
        Setting(
            "auth",
            "string",
            "token",
            choices=AUTH_METHODS,
            help="token (VAULT_TOKEN or token file), approle or kubernetes",
        ),
        Setting("token_file", "path", help="token file when VAULT_TOKEN is unset (~/.vault-token)"),
        Setting("role_id", "string", help="AppRole role_id (auth = 'approle')"),
        Setting("secret_id", "string", secret=True, help="AppRole secret_id"),
        Setting("secret_id_file", "path", help="file holding the AppRole secret_id"),
        Setting("role", "string", help="Vault role of the Kubernetes auth method"),
        Setting(
            "kubernetes_token_file",
            "path",
            help=f"service-account token (default {KUBERNETES_TOKEN_FILE})",
        ),
        Setting("auth_mount", "string", help="auth method mount (default approle / kubernetes)"),
        Setting(
            "namespace", "string", help="Vault Enterprise / HCP namespace (or VAULT_NAMESPACE)"
        ),
        Setting("ca_bundle", "path", help="CA bundle for TLS to the server (or VAULT_CACERT)"),
        Setting("key_cache_ttl", "number", 30.0, minimum=0, help=_SECONDS),
        Setting("retry_total", "integer", 4, minimum=0, maximum=20),
        Setting("retry_backoff_factor", "number", 0.25, minimum=0, help=_SECONDS),
        Setting("retry_backoff_max", "number", 8.0, minimum=0, help=_SECONDS),
        Setting("connection_timeout", "number", 10.0, minimum=0.001, help=_SECONDS),
        Setting("read_timeout", "number", 30.0, minimum=0.001, help=_SECONDS),
    ),
)
"""The ``[providers.vault-transit]`` settings, declared once."""


@dataclass(frozen=True, slots=True)
class VaultSettings:
    """Validated settings. Hashable (it keys the client cache); secrets are not in ``repr``."""

    auth: str = "token"
    env_token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    secret_id_file: str | None = None
    role: str | None = None
    kubernetes_token_file: str | None = None
    auth_mount: str = "approle"
    namespace: str | None = None
    ca_bundle: str | None = None
    key_cache_ttl: float = 30.0
    retry_total: int = 4
    retry_backoff_factor: float = 0.25
    retry_backoff_max: float = 8.0
    connection_timeout: float = 10.0
    read_timeout: float = 30.0


def _existing_file(values: ParsedSettings, key: str) -> str | None:
    path: str | None = values[key]
    if path is not None and not Path(path).is_file():
        raise values.error(key, f"{path} is not a readable file")
    return path


def _auth_mount(values: ParsedSettings, auth: str) -> str:
    mount: str = values["auth_mount"] or auth
    mount = mount.strip("/")
    if not mount or any(not part or part in (".", "..") for part in mount.split("/")):
        raise values.error("auth_mount", "must be a mount path such as 'approle' or 'team/k8s'")
    return mount


def parse_settings(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> VaultSettings:
    """Validate the ``[providers.vault-transit]`` table; ``ConfigError`` naming the bad key.

    ``env`` (default ``os.environ``) supplies ``VAULT_TOKEN``, ``VAULT_NAMESPACE`` and
    ``VAULT_CACERT``, as the Vault CLI reads them.
    """
    env = os.environ if env is None else env
    values = SETTINGS_SCHEMA.parse(raw)
    auth: str = values["auth"]
    for key in sorted((values.given & _AUTH_KEYS) - _AUTH_SETTINGS[auth]):
        users = [m for m in AUTH_METHODS if key in _AUTH_SETTINGS[m]]
        raise values.error(
            key,
            f"is not used by auth = {auth!r} (it applies to: {', '.join(users)}); "
            "set the auth method that should use it",
        )
    env_token = token_file = role_id = secret_id = secret_id_file = role = k8s_file = None
    auth_mount = "approle"
    if auth == "token":
        env_token = env.get("VAULT_TOKEN", "").strip() or None
        token_file = _existing_file(values, "token_file") or os.path.expanduser("~/.vault-token")
    elif auth == "approle":
        role_id = values["role_id"]
        if not role_id:
            raise values.error("role_id", "is required for auth = 'approle'")
        secret_id = values["secret_id"]
        secret_id_file = _existing_file(values, "secret_id_file")
        if secret_id and secret_id_file:
            raise values.error("secret_id_file", "and secret_id are exclusive: set one of them")
        auth_mount = _auth_mount(values, auth)
    else:
        role = values["role"]
        if not role:
            raise values.error("role", "is required for auth = 'kubernetes'")
        k8s_file = _existing_file(values, "kubernetes_token_file") or KUBERNETES_TOKEN_FILE
        auth_mount = _auth_mount(values, auth)
    namespace: str | None = values["namespace"] or (env.get("VAULT_NAMESPACE", "").strip() or None)
    if namespace is not None:
        namespace = namespace.strip("/") or None
    ca_bundle = _existing_file(values, "ca_bundle")
    if ca_bundle is None and env.get("VAULT_CACERT"):
        ca_bundle = env["VAULT_CACERT"]
        if not Path(ca_bundle).is_file():
            raise values.error("ca_bundle", f"(from VAULT_CACERT) {ca_bundle} is not a file")
    return VaultSettings(
        auth=auth,
        env_token=env_token,
        token_file=token_file,
        role_id=role_id,
        secret_id=secret_id,
        secret_id_file=secret_id_file,
        role=role,
        kubernetes_token_file=k8s_file,
        auth_mount=auth_mount,
        namespace=namespace,
        ca_bundle=ca_bundle,
        key_cache_ttl=values["key_cache_ttl"],
        retry_total=values["retry_total"],
        retry_backoff_factor=values["retry_backoff_factor"],
        retry_backoff_max=values["retry_backoff_max"],
        connection_timeout=values["connection_timeout"],
        read_timeout=values["read_timeout"],
    )
