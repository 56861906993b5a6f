"""Build the azure-identity credential that the settings choose.

=====================  =====================================================================
``credential``         azure-identity class (and the settings it uses)
=====================  =====================================================================
``default``            ``DefaultAzureCredential`` -- the ``AZURE_*`` environment variables,
                       workload identity, managed identity (``client_id`` picks a
                       user-assigned one), then developer logins (Azure CLI, …)
``client-secret``      ``ClientSecretCredential`` (``tenant_id``, ``client_id``,
                       ``client_secret``)
``certificate``        ``CertificateCredential`` (``tenant_id``, ``client_id``,
                       ``certificate_path``, ``certificate_password``)
``managed-identity``   ``ManagedIdentityCredential`` (``client_id`` for a user-assigned one)
``workload-identity``  ``WorkloadIdentityCredential`` (``tenant_id``, ``client_id``,
                       ``token_file_path``)
=====================  =====================================================================

``authority_host``, ``disable_instance_discovery`` and ``additionally_allowed_tenants`` go to
every Microsoft Entra credential (sovereign clouds, Azure Stack, cross-tenant vaults,
emulators); ``ca_bundle``, the timeouts and the retry settings go to the credential's HTTP
pipeline as well as the vault's.
"""

from __future__ import annotations

from typing import Any

from azure.core.credentials import TokenCredential
from azure.identity import (
    CertificateCredential,
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)

from kmsenvelope import ConfigError

from .retry import retry_kwargs
from .settings import AzureSettings

__all__ = ["build_credential", "transport_kwargs"]


def transport_kwargs(settings: AzureSettings) -> dict[str, Any]:
    """azure-core transport keywords shared by the vault client and the credential."""
    kwargs: dict[str, Any] = {
        "connection_timeout": settings.connection_timeout,
        "read_timeout": settings.read_timeout,
    }
    if settings.ca_bundle is not None:
        kwargs["connection_verify"] = settings.ca_bundle
    return kwargs


def _authority(settings: AzureSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if settings.authority_host is not None:
        kwargs["authority"] = settings.authority_host
    if settings.disable_instance_discovery:
        kwargs["disable_instance_discovery"] = True
    if settings.additionally_allowed_tenants:
        kwargs["additionally_allowed_tenants"] = list(settings.additionally_allowed_tenants)
    return kwargs


def _required(value: str | None, name: str) -> str:
    if not value:  # parse_settings guarantees these; keep mypy and callers honest
        raise ConfigError(f"[providers.azure-kv] {name} is required for this credential")
    return value


def build_credential(settings: AzureSettings) -> TokenCredential:
    """A new credential object for ``settings`` (callers cache it: tokens live in it)."""
    pipeline = {**transport_kwargs(settings), **retry_kwargs(settings)}
    kind = settings.credential
    try:
        if kind == "client-secret":
            return ClientSecretCredential(
                _required(settings.tenant_id, "tenant_id"),
                _required(settings.client_id, "client_id"),
                _required(settings.client_secret, "client_secret"),
                **_authority(settings),
                **pipeline,
            )
        if kind == "certificate":
            return CertificateCredential(
                _required(settings.tenant_id, "tenant_id"),
                _required(settings.client_id, "client_id"),
                _required(settings.certificate_path, "certificate_path"),
                password=settings.certificate_password,
                **_authority(settings),
                **pipeline,
            )
        if kind == "workload-identity":
            return WorkloadIdentityCredential(
                tenant_id=_required(settings.tenant_id, "tenant_id"),
                client_id=_required(settings.client_id, "client_id"),
                token_file_path=_required(settings.token_file_path, "token_file_path"),
                **_authority(settings),
                **pipeline,
            )
        if kind == "managed-identity":
            return ManagedIdentityCredential(client_id=settings.client_id, **pipeline)
        extra: dict[str, Any] = {}
        if settings.client_id is not None:
            extra["managed_identity_client_id"] = settings.client_id
        return DefaultAzureCredential(**_authority(settings), **extra, **pipeline)
    except (ValueError, OSError) as exc:
        # Unreadable certificate, bad authority URL, bad tenant id characters, …
        raise ConfigError(
            f"[providers.azure-kv] cannot build the {kind!r} credential: {exc}"
        ) from None
