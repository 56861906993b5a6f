"""Turn hvac / requests exceptions into kmsenvelope's provider errors.

==============================================  ============================================
Vault / OpenBao                                 kmsenvelope
==============================================  ============================================
400 "message authentication failed", another    ``UnwrapError``
context, a damaged ciphertext (decrypt, rewrap)
400 "encryption key not found"; 404             ``KeyNotFoundError``
400 version "too old" (min_decryption_version)  ``KeyDisabledError``
401, 403; no token, login refused               ``AccessDeniedError`` naming the policy needed
429 after the bounded retries                   ``ThrottledError``
412, 5xx after retries; sealed; connect/TLS     ``ProviderUnavailableError``
anything else                                   ``ProviderError``
==============================================  ============================================

Every message names the key and the operation. Text that comes from the server is shortened and
scrubbed of the secrets this process holds (token, secret_id, service-account token) before it is
used, so not even a server that echoes them can put them in a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import requests

from kmsenvelope import KmsEnvelopeError, ProviderError, ProviderUnavailableError
from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDisabledError,
    KeyNotFoundError,
    ThrottledError,
    UnwrapError,
)

from ._hvac import hvac_exceptions
from .uri import KeyUri

__all__ = ["Operation", "map_vault_error", "policy_hint", "scrub"]

Operation = Literal["read", "encrypt", "decrypt", "rewrap", "login"]

_MAX_DETAIL = 300
_REDACTED = "<redacted>"
_CAPABILITY = {"read": "read", "encrypt": "update", "decrypt": "update", "rewrap": "update"}
_AUTH_FAILED = re.compile(r"message authentication failed|authentication failed", re.I)
_NOT_FOUND = re.compile(
    r"key not found|encryption key not found|no such key|policy not found", re.I
)
_TOO_OLD = re.compile(r"too old|less than the minimum|disallowed by policy", re.I)
_TOO_NEW = re.compile(r"too new|invalid key version|version .*does not exist", re.I)
_SEALED = re.compile(r"sealed", re.I)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` on one line, shortened, with every secret in ``secrets`` replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, _REDACTED)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def policy_hint(key: KeyUri, operation: Operation) -> str:
    """The Vault policy stanza that allows ``operation`` on ``key``."""
    if operation == "login":
        return "check the auth method's role and credentials"
    path = (
        f"{key.mount}/keys/{key.name}"
        if operation == "read"
        else f"{key.mount}/{operation}/{key.name}"
    )
    capability = _CAPABILITY[operation]
    return f'the token\'s policy needs: path "{path}" {{ capabilities = ["{capability}"] }}'


def _server_text(exc: BaseException, secrets: Iterable[str | None]) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list | tuple) and errors:
        text = "; ".join(str(e) for e in errors)
    else:
        text = str(exc.args[0]) if exc.args and exc.args[0] is not None else ""
    return scrub(text, secrets)


def _from_status(
    exc: BaseException,
    key: KeyUri,
    operation: Operation,
    where: str,
    secrets: Iterable[str | None],
) -> KmsEnvelopeError:
    ex = hvac_exceptions
    text = _server_text(exc, secrets)
    detail = f" (Vault: {text})" if text else ""
    subject = f"{key.uri}: {operation}"
    if isinstance(exc, ex.InvalidRequest):  # 400
        if _NOT_FOUND.search(text):
            return KeyNotFoundError(f"{subject}: no key {key.name!r} in mount {key.mount!r}{where}")
        if _TOO_OLD.search(text):
            return KeyDisabledError(
                f"{subject}: key version {key.version} may no longer be used (below the key's "
                f"min_decryption_version or min_encryption_version){detail}"
            )
        if _TOO_NEW.search(text):
            return KeyNotFoundError(f"{subject}: key version {key.version} does not exist{detail}")
        if operation in ("decrypt", "rewrap"):
            reason = (
                "authentication failed: another encryption context, another key, or a "
                "tampered wrapped key"
                if _AUTH_FAILED.search(text)
                else "the service refused this wrapped key"
            )
            return UnwrapError(f"{subject} rejected: {reason}{detail}")
        if operation == "login":
            return AccessDeniedError(f"{subject} refused: {policy_hint(key, operation)}{detail}")
        return ProviderError(f"{subject} failed{detail}")
    if isinstance(exc, ex.Unauthorized | ex.Forbidden):  # 401, 403
        return AccessDeniedError(f"{subject} denied: {policy_hint(key, operation)}{detail}")
    if isinstance(exc, ex.InvalidPath):  # 404
        if operation == "read":
            return KeyNotFoundError(f"{subject}: no key {key.name!r} in mount {key.mount!r}{where}")
        return KeyNotFoundError(
            f"{subject}: no such path on {key.address}: is {key.mount!r} a Transit mount"
            f"{where}?{detail}"
        )
    if isinstance(exc, ex.RateLimitExceeded):  # 429
        return ThrottledError(f"{subject}: still rate limited after bounded retries{detail}")
    if isinstance(exc, ex.VaultDown) and _SEALED.search(text):
        return ProviderUnavailableError(f"{subject}: {key.address} is sealed{detail}")
    if isinstance(
        exc,
        ex.InternalServerError
        | ex.VaultNotInitialized
        | ex.BadGateway
        | ex.VaultDown
        | ex.PreconditionFailed,
    ):
        return ProviderUnavailableError(f"{subject}: the server kept failing{detail}")
    return ProviderError(f"{subject} failed{detail}")


def _network_error(exc: requests.RequestException, key: KeyUri, operation: Operation) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return (
            f"{key.uri}: {operation}: TLS to {key.address} failed (set ca_bundle in "
            "[providers.vault-transit], or VAULT_CACERT, if the server uses a private CA)"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return f"{key.uri}: {operation}: {key.address} did not answer in time"
    return f"{key.uri}: {operation}: {key.address} is unreachable"


def map_vault_error(
    exc: BaseException,
    *,
    key: KeyUri,
    operation: Operation,
    namespace: str | None = None,
    secrets: Iterable[str | None] = (),
) -> KmsEnvelopeError:
    """The kmsenvelope error for ``exc``, raised while doing ``operation`` on ``key``."""
    if isinstance(exc, KmsEnvelopeError):
        return exc
    secrets = tuple(secrets)
    where = f" (namespace {namespace!r})" if namespace else ""
    if isinstance(exc, hvac_exceptions.VaultError):
        return _from_status(exc, key, operation, where, secrets)
    if isinstance(exc, requests.RequestException):
        return ProviderUnavailableError(_network_error(exc, key, operation))
    text = scrub(str(exc), secrets)
    return ProviderError(f"{key.uri}: {operation} failed: {type(exc).__name__}: {text}")
