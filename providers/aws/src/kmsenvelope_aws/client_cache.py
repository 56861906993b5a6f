"""One boto3 KMS client per (region, profile, endpoint, timeouts), shared by every KEK.

boto3 clients are thread-safe once built, but building one from a shared ``Session`` is not,
so sessions and clients are created under one lock and reused afterwards.

Credentials, the region for key ids and aliases, and the endpoint come from the standard
boto3 chain unless the settings override them. botocore's own retries are switched off
(one attempt per call): the provider retries itself (:mod:`kmsenvelope_aws.retry`), so the
number of attempts is exactly ``max_attempts`` whatever the botocore configuration says.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

from kmsenvelope.errors import ConfigError

from .settings import ProviderSettings

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient

__all__ = [
    "DEFAULT_CLIENTS",
    "ClientCache",
    "ClientSpec",
    "check_endpoint",
    "clear_client_cache",
]

USER_AGENT = "kmsenvelope-aws/0.1.0"


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """Everything that makes two KMS clients different."""

    region: str
    profile: str | None = None
    endpoint_url: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    allow_http: bool = False

    @classmethod
    def for_settings(cls, region: str, settings: ProviderSettings) -> ClientSpec:
        """The spec for ``region`` under ``settings``."""
        return cls(
            region=region,
            profile=settings.profile,
            endpoint_url=settings.endpoint_url,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            allow_http=settings.allow_http,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, *, allow_http: bool) -> None:
    """Refuse plain HTTP except on loopback: data keys travel in KMS request bodies."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and (allow_http or _is_loopback(parts.hostname or "")):
        return
    raise ConfigError(
        f"AWS KMS endpoint {url!r} is not HTTPS: data keys would cross the network in clear. "
        "Use https://, or set allow_http = true in [providers.aws-kms] for an emulator"
    )


class ClientCache:
    """Thread-safe cache of boto3 sessions (per profile) and KMS clients (per spec)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str | None, boto3.session.Session] = {}
        self._clients: dict[ClientSpec, KMSClient] = {}

    def _session(self, profile: str | None) -> boto3.session.Session:
        session = self._sessions.get(profile)
        if session is None:
            try:
                session = boto3.session.Session(profile_name=profile)
            except botocore.exceptions.ProfileNotFound:
                raise ConfigError(
                    f"[providers.aws-kms] profile: AWS profile {profile!r} is not defined in the "
                    "AWS config or credentials file"
                ) from None
            self._sessions[profile] = session
        return session

    def default_region(self, profile: str | None) -> str | None:
        """The region the standard chain gives (AWS_REGION, AWS_DEFAULT_REGION, profile)."""
        with self._lock:
            return self._session(profile).region_name

    def client(self, spec: ClientSpec) -> KMSClient:
        """The KMS client for ``spec``, built on first use."""
        with self._lock:
            client = self._clients.get(spec)
            if client is not None:
                return client
            config = botocore.config.Config(
                connect_timeout=spec.connect_timeout,
                read_timeout=spec.read_timeout,
                retries={"mode": "standard", "total_max_attempts": 1},
                user_agent_extra=USER_AGENT,
            )
            try:
                client = self._session(spec.profile).client(
                    "kms",
                    region_name=spec.region,
                    endpoint_url=spec.endpoint_url,
                    config=config,
                )
            except (ValueError, botocore.exceptions.BotoCoreError) as exc:
                raise ConfigError(
                    f"[providers.aws-kms]: cannot create a KMS client for region "
                    f"{spec.region!r}: {type(exc).__name__}: {exc}"
                ) from None
            check_endpoint(client.meta.endpoint_url, allow_http=spec.allow_http)
            self._clients[spec] = client
            return client

    def clear(self) -> None:
        """Forget every session and client (e.g. after changing AWS_* environment variables)."""
        with self._lock:
            self._sessions.clear()
            self._clients.clear()


DEFAULT_CLIENTS = ClientCache()
"""The process-wide cache the ``aws-kms`` provider factory uses."""


def clear_client_cache() -> None:
    """Forget the process-wide sessions and clients; the next KEK builds fresh ones."""
    DEFAULT_CLIENTS.clear()
