"""From google-api-core / google-auth exceptions to kmsenvelope's errors, and which are retried.

=============================================  =================================================
Cloud KMS status (gRPC code, or REST status)   kmsenvelope error
=============================================  =================================================
UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,      retried by the SDK's ``Retry``, then
connection refused / reset (REST)              ``ProviderUnavailableError``
RESOURCE_EXHAUSTED (quota)                     retried, then ``ThrottledError``
PERMISSION_DENIED, UNAUTHENTICATED,            ``AccessDeniedError`` (naming the permission the
no Application Default Credentials             operation needs)
NOT_FOUND                                      ``KeyNotFoundError``
FAILED_PRECONDITION naming DESTROYED /         ``KeyDestroyedError``
DESTROY_SCHEDULED
FAILED_PRECONDITION naming DISABLED, PENDING_* ``KeyDisabledError``
or "not enabled"
INVALID_ARGUMENT on Decrypt/AsymmetricDecrypt  ``UnwrapError`` (damaged, another key, other AAD)
anything else                                  ``ProviderError``
=============================================  =================================================

Messages name the key, the operation and the service's status and message; never a request
body, so never key material.
"""

from __future__ import annotations

import logging
from typing import Final

from google.api_core import exceptions as api
from google.api_core import retry as retries
from google.auth import exceptions as auth_errors

from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    KmsEnvelopeError,
    ProviderError,
    ProviderUnavailableError,
    ThrottledError,
    UnwrapError,
)

from .settings import GcpSettings

__all__ = ["PERMISSIONS", "build_retry", "is_transient", "status_of", "to_library_error"]

log = logging.getLogger("kmsenvelope_gcp")

PERMISSIONS: Final = {
    "Encrypt": "cloudkms.cryptoKeyVersions.useToEncrypt (roles/cloudkms.cryptoKeyEncrypter)",
    "Decrypt": "cloudkms.cryptoKeyVersions.useToDecrypt (roles/cloudkms.cryptoKeyDecrypter)",
    "AsymmetricDecrypt": (
        "cloudkms.cryptoKeyVersions.useToDecrypt (roles/cloudkms.cryptoKeyDecrypter)"
    ),
    "GetPublicKey": "cloudkms.cryptoKeyVersions.viewPublicKey (roles/cloudkms.publicKeyViewer)",
    "GetCryptoKey": "cloudkms.cryptoKeys.get (roles/cloudkms.viewer)",
    "ListCryptoKeyVersions": "cloudkms.cryptoKeyVersions.list (roles/cloudkms.viewer)",
}
"""The IAM permission (and a predefined role holding it) each call needs."""

_TRANSIENT: Final = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "ABORTED"})
_THROTTLED: Final = "RESOURCE_EXHAUSTED"
_UNWRAP_OPERATIONS: Final = frozenset({"Decrypt", "AsymmetricDecrypt"})
_HTTP_STATUS: Final = {
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _network_errors() -> tuple[type[BaseException], ...]:
    """The REST transport's connection failures (requests comes with google-api-core)."""
    import requests

    return (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        auth_errors.TransportError,
    )


def status_of(exc: BaseException | None) -> str | None:
    """The canonical status name of a service error (``"NOT_FOUND"``), gRPC or REST."""
    if not isinstance(exc, api.GoogleAPICallError):
        return None
    code = exc.grpc_status_code
    if code is not None:
        return str(code.name)
    response = exc.response
    try:
        status = response.json()["error"]["status"]  # REST: the JSON error names the status
    except Exception:  # no JSON body: fall back to the HTTP status
        status = None
    if isinstance(status, str) and status:
        return status
    return _HTTP_STATUS.get(int(exc.code or 0))


def service_message(exc: BaseException) -> str:
    """The service's own message, without the REST transport's ``METHOD URL:`` prefix."""
    if isinstance(exc, api.GoogleAPICallError):
        try:
            message = exc.response.json()["error"]["message"]
            if isinstance(message, str):
                return message
        except Exception:  # noqa: S110 - gRPC errors have no JSON response
            pass
        return str(exc.message)
    return str(exc)


def _describe(exc: BaseException) -> str:
    """``STATUS: message`` of a service error, ``Class: text`` of anything else."""
    status = status_of(exc)
    if status is not None:
        return f"{status}: {service_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


def is_transient(exc: BaseException) -> bool:
    """The retry predicate: worth another attempt (outage, timeout, quota)."""
    if isinstance(exc, _network_errors()):
        return True
    status = status_of(exc)
    return status in _TRANSIENT or status == _THROTTLED


def _log_retry(exc: BaseException) -> None:
    log.debug("Cloud KMS call failed (%s), retrying", status_of(exc) or type(exc).__name__)


def build_retry(settings: GcpSettings) -> retries.Retry | None:
    """The SDK's own ``Retry`` for these settings (None: ``retry_deadline = 0``, no retries)."""
    if settings.retry_deadline == 0:
        return None
    return retries.Retry(
        predicate=is_transient,
        initial=settings.retry_initial,
        maximum=settings.retry_maximum,
        multiplier=settings.retry_multiplier,
        timeout=settings.retry_deadline,
        on_error=_log_retry,
    )


def _state_error(prefix: str, status: str, message: str) -> KmsEnvelopeError:
    """FAILED_PRECONDITION: a version's state (named in the message), or another precondition
    such as a key of the wrong purpose."""
    upper = message.upper()
    if "DESTROY" in upper:
        return KeyDestroyedError(
            f"{prefix}: {status}: {message} -- the key version is destroyed or scheduled for "
            "destruction; until it is destroyed an administrator can restore it "
            "(gcloud kms keys versions restore), after that what it wrapped is lost"
        )
    if any(word in upper for word in ("DISABLED", "NOT ENABLED", "PENDING")):
        return KeyDisabledError(
            f"{prefix}: {status}: {message} -- enable the key version (gcloud kms keys versions "
            "enable) or use another recipient"
        )
    return ProviderError(f"{prefix}: {status}: {message}")


def to_library_error(exc: BaseException, *, key: str, operation: str) -> KmsEnvelopeError:
    """The kmsenvelope error for ``exc`` raised by Cloud KMS ``operation`` on ``key``."""
    prefix = f"{key}: Cloud KMS {operation} failed"
    if isinstance(exc, api.RetryError):
        cause = exc.cause
        last = "" if cause is None else f": {_describe(cause)}"
        kind = ThrottledError if status_of(cause) == _THROTTLED else ProviderUnavailableError
        return kind(
            f"{prefix}: {exc.message}{last} -- Cloud KMS is "
            "unreachable or failing; retry later (retry_deadline in [providers.gcp-kms] sets how "
            "long each call keeps trying)"
        )
    if isinstance(exc, auth_errors.DefaultCredentialsError):
        return AccessDeniedError(
            f"{prefix}: no Google credentials: {exc} -- run 'gcloud auth application-default "
            "login', set GOOGLE_APPLICATION_CREDENTIALS, or set credentials_file in "
            "[providers.gcp-kms]"
        )
    if isinstance(exc, auth_errors.RefreshError):
        return AccessDeniedError(f"{prefix}: the credentials were refused: {exc}")
    if isinstance(exc, _network_errors()):
        return ProviderUnavailableError(
            f"{prefix}: Cloud KMS endpoint unreachable: {type(exc).__name__}: {exc}"
        )
    if not isinstance(exc, api.GoogleAPICallError):
        return ProviderError(f"{prefix}: {type(exc).__name__}: {exc}")
    status = status_of(exc) or f"HTTP {exc.code}"
    message = service_message(exc)
    if status in _TRANSIENT:
        return ProviderUnavailableError(f"{prefix}: {status}: {message} -- retry later")
    if status == _THROTTLED:
        return ThrottledError(
            f"{prefix}: {status}: {message} -- a Cloud KMS quota is exhausted; retry later or "
            "request a higher quota"
        )
    if status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        needed = PERMISSIONS.get(operation, "a Cloud KMS permission on this key")
        return AccessDeniedError(
            f"{prefix}: {status}: {message} -- the caller needs {needed} on this key, and "
            "valid credentials"
        )
    if status == "NOT_FOUND":
        return KeyNotFoundError(
            f"{prefix}: {status}: {message} -- check the project, location, key ring and key"
        )
    if status == "FAILED_PRECONDITION":
        return _state_error(prefix, status, message)
    if status == "INVALID_ARGUMENT" and operation in _UNWRAP_OPERATIONS:
        return UnwrapError(
            f"{prefix}: {status}: {message} -- the wrapped key is damaged, was made by another "
            "key, or the encryption context differs"
        )
    return ProviderError(f"{prefix}: {status}: {message}")
