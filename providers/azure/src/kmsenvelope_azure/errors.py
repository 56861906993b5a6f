"""Turn azure-core / azure-identity exceptions into kmsenvelope's provider errors.

=========================================  ===============================================
Azure                                      kmsenvelope
=========================================  ===============================================
400 on unwrapKey or decrypt (tampered,     ``UnwrapError``
another key; decrypt: another context)
401, or no token could be obtained         ``AccessDeniedError``
403 ``KeyDisabled`` / expired / not yet    ``KeyDisabledError``
403 otherwise                              ``AccessDeniedError`` naming the permission
404                                        ``KeyNotFoundError``
429 after the bounded retries              ``ThrottledError``
408, 5xx after retries; connect/read/TLS   ``ProviderUnavailableError``
anything else                              ``ProviderError``
=========================================  ===============================================

Every message names the key and the operation; none contains key material or tokens.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from kmsenvelope import KmsEnvelopeError, ProviderError, ProviderUnavailableError
from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDisabledError,
    KeyNotFoundError,
    ThrottledError,
    UnwrapError,
)

from .uri import KeyUri

__all__ = ["Operation", "map_azure_error", "permission_hint"]

Operation = Literal["get", "wrapKey", "unwrapKey", "encrypt", "decrypt"]

_DISABLED = re.compile(r"disabled", re.IGNORECASE)
_EXPIRED = re.compile(r"expired|not yet valid|notyetvalid|nbf|not before", re.IGNORECASE)
_MAX_DETAIL = 300


def permission_hint(key: KeyUri, operation: Operation) -> str:
    """What to grant so ``operation`` on ``key`` is allowed."""
    if operation in ("encrypt", "decrypt"):
        # Only A*GCM (oct-HSM keys) uses these; the "Service Encryption User" roles lack them.
        fallback = (
            'or set oct_algorithm = "A256KW" in [providers.azure-kv] to wrap with wrapKey '
            "(the context is then bound by the envelope only)"
            if operation == "encrypt"
            else "(envelopes wrapped with A256GCM need it to decrypt)"
        )
        return (
            f"the identity needs the {operation!r} key permission: assign the Managed HSM local "
            "RBAC role 'Managed HSM Crypto User' (or a custom role with keys/encrypt/action and "
            f"keys/decrypt/action) at scope /keys or /keys/{key.name}, {fallback}"
        )
    if key.is_managed_hsm:
        return (
            f"the identity needs the {operation!r} key permission: assign the Managed HSM local "
            "RBAC role 'Managed HSM Crypto Service Encryption User' or 'Managed HSM Crypto User' "
            f"at scope /keys or /keys/{key.name}"
        )
    return (
        f"the identity needs the {operation!r} key permission: assign the Azure RBAC role "
        "'Key Vault Crypto Service Encryption User' or 'Key Vault Crypto User' on the vault or "
        f"key, or (access-policy vaults) grant the key permission {operation}"
    )


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _error_body(exc: HttpResponseError) -> tuple[str, str, str]:
    """``(code, inner_code, message)`` from an Azure error body ``{"error": {…}}``."""
    code = inner = message = ""
    response = exc.response
    body: Any = None
    if response is not None:
        try:
            body = json.loads(response.text())
        except (ValueError, TypeError):
            body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "")
        message = str(error.get("message") or "")
        inner_error = error.get("innererror") or error.get("innerError")
        if isinstance(inner_error, dict):
            inner = str(inner_error.get("code") or "")
    if not message:
        message = exc.message or str(exc)
        message = message.splitlines()[0] if message else ""
    return code, inner, message


def _status_error(
    exc: HttpResponseError, key: KeyUri, operation: Operation, what: str
) -> KmsEnvelopeError:
    status = exc.status_code or 0
    code, inner, message = _error_body(exc)
    codes = "/".join(c for c in (code, inner) if c)
    detail = f" (Azure {status}{' ' + codes if codes else ''}: {_short(message)})"
    subject = f"{key.uri}: {operation}"
    if status == 400 and operation == "unwrapKey":
        return UnwrapError(
            f"{subject} rejected: the service could not unwrap this wrapped key (tampered, "
            f"another key, or another algorithm){detail}"
        )
    if status == 400 and operation == "decrypt":
        return UnwrapError(
            f"{subject} rejected: the service refused to decrypt this wrapped key (another "
            f"encryption context, tampered, or another key){detail}"
        )
    if status == 401:
        return AccessDeniedError(
            f"{subject} denied: the vault rejected the credential's token (wrong tenant, "
            f"cloud or audience?){detail}"
        )
    if status == 403:
        if "KeyDisabled" in (code, inner) or _DISABLED.search(message):
            return KeyDisabledError(
                f"{what} is disabled; enable it (or use another version) to {operation}{detail}"
            )
        if (
            "KeyExpired" in (code, inner)
            or "KeyNotYetValid" in (code, inner)
            or (_EXPIRED.search(message) and "permission" not in message.lower())
        ):
            return KeyDisabledError(f"{what} is expired or not yet valid for {operation}{detail}")
        return AccessDeniedError(f"{subject} denied: {permission_hint(key, operation)}{detail}")
    if status == 404:
        return KeyNotFoundError(
            f"{what} was not found in {key.vault_url} (no such key or version, or deleted){detail}"
        )
    if status == 429:
        return ThrottledError(f"{subject} still throttled after bounded retries{detail}")
    if status == 408 or status >= 500:
        return ProviderUnavailableError(f"{subject} failed: the service kept failing{detail}")
    return ProviderError(f"{subject} failed{detail}")


def _from_vault(exc: HttpResponseError, key: KeyUri) -> bool:
    """True if ``exc`` carries the vault's response (not the identity endpoint's)."""
    response = exc.response
    if response is None:
        return False
    url = str(getattr(getattr(response, "request", None), "url", "") or "")
    if not url:
        return True
    return url.lower().startswith(key.vault_url.lower() + "/")


def _tls_hint(text: str) -> str:
    lowered = text.lower()
    if "certificate" in lowered or "ssl" in lowered:
        return " (TLS verification failed: set ca_bundle if the endpoint uses a private CA)"
    return ""


def _caused_by_network(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ServiceRequestError | ServiceResponseError | ConnectionError):
            return True
        current = current.__cause__ or current.__context__
    return False


def map_azure_error(
    exc: BaseException, *, key: KeyUri, operation: Operation, version: str | None = None
) -> KmsEnvelopeError:
    """The kmsenvelope error for ``exc`` raised while doing ``operation`` on ``key``."""
    target = key.with_version(version) if version else key
    what = f"key {target.uri}" + ("" if target.version else " (current version)")
    if isinstance(exc, KmsEnvelopeError):
        return exc
    if isinstance(exc, HttpResponseError) and exc.status_code and _from_vault(exc, key):
        return _status_error(exc, target, operation, what)
    if isinstance(exc, ClientAuthenticationError):
        # The credential could not produce a token (the identity endpoint refused or failed).
        text = _short(exc.message or str(exc))
        if _caused_by_network(exc):
            return ProviderUnavailableError(
                f"{target.uri}: {operation}: the identity endpoint could not be reached"
                f"{_tls_hint(text)}: {text}"
            )
        return AccessDeniedError(
            f"{target.uri}: {operation}: could not authenticate to Microsoft Entra ID: {text}"
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        text = _short(exc.message or str(exc))
        return ProviderUnavailableError(
            f"{target.uri}: {operation}: vault {key.vault_url} is unreachable"
            f"{_tls_hint(text)}: {text}"
        )
    if isinstance(exc, ValueError):
        # Raised by the SDK's challenge policy, e.g. when the challenge's resource does not
        # match the vault's domain (a misconfiguration, or a server posing as Key Vault).
        return ProviderError(
            f"{target.uri}: {operation}: refused to authenticate to {key.vault_url}: "
            f"{_short(str(exc))}"
        )
    if isinstance(exc, AzureError):
        return ProviderError(f"{target.uri}: {operation} failed: {_short(exc.message or str(exc))}")
    return ProviderError(
        f"{target.uri}: {operation} failed: {type(exc).__name__}: {_short(str(exc))}"
    )
