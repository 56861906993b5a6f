"""One authenticated hvac client per server and settings, and the calls made through it.

Authentication follows the ``auth`` setting:

* ``token`` -- ``VAULT_TOKEN`` when set, otherwise the token file (``~/.vault-token``, which
  ``vault login`` writes, or ``token_file``), exactly the Vault CLI's order;
* ``approle`` -- ``POST auth/MOUNT/login`` with ``role_id`` and ``secret_id`` (or the content of
  ``secret_id_file``, read at each login so an agent may rotate it);
* ``kubernetes`` -- ``POST auth/MOUNT/login`` with ``role`` and the service-account token read
  from ``kubernetes_token_file`` at each login (Kubernetes rotates it).

A request refused with 403 is tried once more after fetching credentials again (a new login, or a
token file that changed), so an expired login token or a rotated token file costs one refusal,
not a failed job. No token, secret_id or service-account token is ever logged, shown in a
``repr`` or put in an error message. Redirects are not followed: a redirect would carry the
token to whatever host it names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests

from kmsenvelope.errors import AccessDeniedError

from ._hvac import Client, hvac_exceptions
from .errors import Operation, map_vault_error
from .retry import mount_retries
from .settings import VaultSettings
from .uri import KeyUri

__all__ = ["ClientCache", "VaultSession"]

T = TypeVar("T")
log = logging.getLogger("kmsenvelope_vault")


def _read_secret_file(path: str, what: str, key: KeyUri) -> str | None:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise AccessDeniedError(f"{key.uri}: cannot read the {what} {path}: {reason}") from None
    return text or None


class VaultSession:
    """An hvac client for one server, authenticated on first use; safe to share across threads."""

    def __init__(self, address: str, settings: VaultSettings) -> None:
        self._address = address
        self._settings = settings
        self._lock = threading.Lock()
        self._client: Any = None
        self._token: str | None = None
        self._login_secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"VaultSession({self._address!r}, auth={self._settings.auth!r})"

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """Every secret this session holds, for scrubbing server text out of messages."""
        s = self._settings
        return (self._token, s.env_token, s.secret_id, *self._login_secrets)

    def _build(self) -> Any:
        s = self._settings
        session = requests.Session()
        # hvac takes its TLS verification from a session it is given: set it there.
        session.verify = s.ca_bundle if s.ca_bundle else True
        mount_retries(session, s)
        return Client(
            url=self._address,
            token="",  # never None: hvac would then read VAULT_TOKEN / ~/.vault-token itself
            verify=session.verify,
            timeout=(s.connection_timeout, s.read_timeout),
            session=session,
            namespace=s.namespace,
            allow_redirects=False,
        )

    def _credentials(self, client: Any, key: KeyUri) -> str:
        """A fresh token: from the environment or token file, or by logging in."""
        s = self._settings
        if s.auth == "token":
            token = s.env_token
            if token is None and s.token_file is not None:
                token = _read_secret_file(s.token_file, "token file", key)
            if not token:
                raise AccessDeniedError(
                    f"{key.uri}: no Vault token: set VAULT_TOKEN, log in with 'vault login' "
                    f"(it writes {s.token_file or '~/.vault-token'}), or set auth = 'approle' or "
                    "'kubernetes' in [providers.vault-transit]"
                )
            return token
        if s.auth == "approle":
            secret_id = s.secret_id
            if s.secret_id_file is not None:
                secret_id = _read_secret_file(s.secret_id_file, "secret_id file", key)
            self._login_secrets = tuple(x for x in (secret_id,) if x)
            response = client.auth.approle.login(
                role_id=s.role_id, secret_id=secret_id, mount_point=s.auth_mount, use_token=False
            )
        else:
            assert s.kubernetes_token_file is not None
            jwt = _read_secret_file(s.kubernetes_token_file, "service-account token file", key)
            if not jwt:
                raise AccessDeniedError(
                    f"{key.uri}: the service-account token file {s.kubernetes_token_file} is "
                    "missing or empty (set kubernetes_token_file)"
                )
            self._login_secrets = (jwt,)
            response = client.auth.kubernetes.login(
                role=s.role, jwt=jwt, mount_point=s.auth_mount, use_token=False
            )
        auth = response.get("auth") if isinstance(response, dict) else None
        token = auth.get("client_token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            raise AccessDeniedError(
                f"{key.uri}: the {s.auth} login at auth/{s.auth_mount} returned no client token"
            )
        log.debug("%s: logged in to %s with %s", key.uri, self._address, s.auth)
        return token

    def _authenticate(self, key: KeyUri, stale: str | None) -> tuple[Any, str]:
        """The client and its token; a new token if the current one is ``stale``."""
        with self._lock:
            if self._client is None:
                self._client = self._build()
            if self._token is None or self._token == stale:
                try:
                    token = self._credentials(self._client, key)
                except (hvac_exceptions.VaultError, requests.RequestException) as exc:
                    raise map_vault_error(
                        exc,
                        key=key,
                        operation="login",
                        namespace=self._settings.namespace,
                        secrets=self.secrets,
                    ) from exc
                self._token = token
                self._client.token = token
            return self._client, self._token

    def call(self, key: KeyUri, operation: Operation, request: Callable[[Any], T]) -> T:
        """``request(client)`` with a token; one retry with fresh credentials after a 403."""
        client, used = self._authenticate(key, None)
        try:
            try:
                return request(client)
            except hvac_exceptions.Forbidden:
                client, token = self._authenticate(key, used)
                if token == used:
                    raise
                log.debug("%s: %s refused; retrying once with new credentials", key.uri, operation)
                return request(client)
        except (hvac_exceptions.VaultError, requests.RequestException) as exc:
            raise map_vault_error(
                exc,
                key=key,
                operation=operation,
                namespace=self._settings.namespace,
                secrets=self.secrets,
            ) from exc

    def close(self) -> None:
        """Close the HTTP connections."""
        with self._lock:
            if self._client is not None:
                self._client.adapter.close()
            self._client = None
            self._token = None


class ClientCache:
    """Thread-safe cache: one :class:`VaultSession` per ``(address, settings)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, VaultSettings], VaultSession] = {}

    def session(self, address: str, settings: VaultSettings) -> VaultSession:
        """The session for ``address`` and ``settings``, made once."""
        with self._lock:
            found = self._sessions.get((address, settings))
            if found is None:
                found = self._sessions[(address, settings)] = VaultSession(address, settings)
            return found

    def close(self) -> None:
        """Close every session."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()
