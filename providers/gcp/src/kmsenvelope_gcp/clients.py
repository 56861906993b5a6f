"""One Cloud KMS client per transport configuration, built on first use and shared.

Every key opened with the same transport settings (``transport``, ``emulator_host``,
``credentials_file``, ``api_endpoint``) shares one ``KeyManagementServiceClient`` -- one gRPC
channel or HTTP session, one credential and token cache -- so reopening the many versioned key
ids that old envelopes record costs no new connection. Building a client looks up
Application Default Credentials, so it happens on the first call, not when a key is opened.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kmsenvelope.errors import ConfigError

from .settings import GcpSettings

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.cloud.kms_v1 import KeyManagementServiceClient

__all__ = ["DEFAULT_CLIENTS", "ClientCache", "ClientSpec", "clear_client_cache"]

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """What decides which client a key uses (the settings that shape the connection)."""

    transport: str = "grpc"
    emulator_host: str | None = None
    credentials_file: str | None = None
    api_endpoint: str | None = None

    @classmethod
    def for_settings(cls, settings: GcpSettings) -> ClientSpec:
        """The connection part of ``settings``."""
        return cls(
            settings.transport,
            settings.emulator_host,
            settings.credentials_file,
            settings.api_endpoint,
        )


def _file_credentials(path: str) -> Credentials:
    """The credentials in ``path`` (service account, authorized user, external account...)."""
    import google.auth
    from google.auth import exceptions as auth_errors

    try:
        with warnings.catch_warnings():
            # The generic loader warns against files from untrusted sources; this path comes
            # from the operator's own [providers.gcp-kms] table.
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = google.auth.load_credentials_from_file(  # type: ignore[no-untyped-call]
                path, scopes=SCOPES
            )
    except (auth_errors.DefaultCredentialsError, ValueError, OSError) as exc:
        raise ConfigError(
            f"setting 'credentials_file' in [providers.gcp-kms]: {path} holds no usable Google "
            f"credentials: {exc}"
        ) from None
    credentials: Credentials = loaded[0]
    return credentials


def _build(spec: ClientSpec) -> KeyManagementServiceClient:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.kms_v1 import KeyManagementServiceClient
    from google.cloud.kms_v1.services.key_management_service.transports import (
        KeyManagementServiceGrpcTransport,
        KeyManagementServiceRestTransport,
    )

    if spec.emulator_host is not None:
        if spec.transport == "rest":
            rest = KeyManagementServiceRestTransport(
                host=spec.emulator_host,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                url_scheme="http",
            )
            return KeyManagementServiceClient(transport=rest)
        grpc: Any = importlib.import_module("grpc")  # grpcio ships no type annotations

        # No proxy: an emulator is on this machine (or one the operator allowed explicitly).
        channel = grpc.insecure_channel(spec.emulator_host, options=[("grpc.enable_http_proxy", 0)])
        return KeyManagementServiceClient(
            transport=KeyManagementServiceGrpcTransport(channel=channel)
        )
    credentials = (
        None if spec.credentials_file is None else _file_credentials(spec.credentials_file)
    )
    options = ClientOptions(api_endpoint=spec.api_endpoint) if spec.api_endpoint else None
    # credentials None: Application Default Credentials, looked up by the client itself.
    return KeyManagementServiceClient(
        credentials=credentials, transport=spec.transport, client_options=options
    )


class ClientCache:
    """Thread-safe cache of ``KeyManagementServiceClient`` per :class:`ClientSpec`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[ClientSpec, KeyManagementServiceClient] = {}

    def client(self, spec: ClientSpec) -> KeyManagementServiceClient:
        """The client for ``spec``, built once (``google.auth`` errors propagate)."""
        with self._lock:
            found = self._clients.get(spec)
            if found is None:
                found = self._clients[spec] = _build(spec)
            return found

    def clear(self) -> None:
        """Forget every client (their channels close when no key uses them any more)."""
        with self._lock:
            self._clients.clear()


DEFAULT_CLIENTS = ClientCache()
"""The process-wide cache the registered factory uses."""


def clear_client_cache() -> None:
    """Forget the process-wide clients (tests; after credentials change)."""
    DEFAULT_CLIENTS.clear()
