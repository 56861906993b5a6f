"""From boto3/botocore exceptions to kmsenvelope's errors.

=====================================================  ==================================
AWS error code / botocore exception                    kmsenvelope error
=====================================================  ==================================
ThrottlingException and other throttling codes         retried, then ``ThrottledError``
KMSInternalException, DependencyTimeoutException,      retried, then
KeyUnavailableException, HTTP 500/502/503/504          ``ProviderUnavailableError``
connection refused/reset, connect/read timeouts        retried, then
                                                       ``ProviderUnavailableError``
TLS certificate failure (SSLError)                     ``ProviderUnavailableError``
AccessDeniedException, UnrecognizedClientException,    ``AccessDeniedError``
expired/invalid tokens, no credentials found
NotFoundException                                      ``KeyNotFoundError``
DisabledException                                      ``KeyDisabledError``
KMSInvalidStateException: pending deletion             ``KeyDestroyedError``
KMSInvalidStateException: any other state              ``KeyDisabledError``
InvalidCiphertextException, IncorrectKeyException,     ``UnwrapError`` (on Decrypt)
InvalidKeyUsageException
anything else                                          ``ProviderError``
=====================================================  ==================================

Every message names the key and the AWS error code (or the botocore exception class); none
contains request bodies, so no key material.
"""

from __future__ import annotations

import re
from enum import Enum

import botocore.exceptions

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

__all__ = ["Outcome", "classify", "error_code", "to_library_error"]

THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottledException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
ACCESS_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredTokenException",
        "ExpiredToken",
    }
)
UNWRAP_CODES = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException"}
)
_CREDENTIAL_ERRORS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.NoAuthTokenError,
    botocore.exceptions.TokenRetrievalError,
)
_NETWORK_ERRORS = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)


class Outcome(Enum):
    """What the retry loop should do with a failed call."""

    THROTTLED = "throttled"
    TRANSIENT = "transient"
    FATAL = "fatal"


def _client_error_parts(exc: botocore.exceptions.ClientError) -> tuple[str, str, int | None]:
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    status = meta.get("HTTPStatusCode")
    return str(error.get("Code", "") or "UnknownError"), str(error.get("Message", "")), status


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ``ClientError``, or the exception's class name."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return _client_error_parts(exc)[0]
    return type(exc).__name__


def classify(exc: BaseException) -> Outcome:
    """Whether ``exc`` is worth retrying, and as what."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code, _message, status = _client_error_parts(exc)
        if code in THROTTLING_CODES or status == 429:
            return Outcome.THROTTLED
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
            return Outcome.TRANSIENT
        return Outcome.FATAL
    if isinstance(exc, botocore.exceptions.SSLError):
        return Outcome.FATAL  # a certificate problem does not fix itself
    if isinstance(exc, _NETWORK_ERRORS):
        return Outcome.TRANSIENT
    return Outcome.FATAL


def _safe_botocore_text(exc: BaseException) -> str:
    """botocore's message, except for parameter validation (it can echo parameter values)."""
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        names = sorted(set(re.findall(r"parameter ([A-Za-z0-9_.\[\]]+)", str(exc))))
        return "invalid request parameter(s): " + (", ".join(names) or "see botocore")
    return str(exc)


def _invalid_state(prefix: str, code: str, message: str) -> KmsEnvelopeError:
    lowered = message.lower().replace(" ", "")
    if "pendingdeletion" in lowered or "pendingreplicadeletion" in lowered:
        return KeyDestroyedError(
            f"{prefix}: {code}: {message} -- the key is scheduled for deletion; until the "
            "waiting period ends an administrator can still cancel it (kms:CancelKeyDeletion, "
            "then kms:EnableKey), after that everything it wrapped is lost"
        )
    return KeyDisabledError(
        f"{prefix}: {code}: {message} -- the key is not in a usable state (pending import, "
        "unavailable custom key store, ...); check it with 'aws kms describe-key'"
    )


def to_library_error(
    exc: BaseException, *, key: str, operation: str, attempts: int = 1
) -> KmsEnvelopeError:
    """The kmsenvelope error for ``exc`` raised by KMS ``operation`` on ``key``.

    ``attempts`` is how many times the call was made (shown for retryable failures).
    """
    prefix = f"{key}: KMS {operation} failed"
    tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}"
    if isinstance(exc, botocore.exceptions.ClientError):
        code, message, status = _client_error_parts(exc)
        outcome = classify(exc)
        if outcome is Outcome.THROTTLED:
            return ThrottledError(
                f"{prefix}{tries}: {code}: {message} -- KMS is still throttling; retry later, "
                "raise max_attempts/backoff_max in [providers.aws-kms], or request a higher "
                "KMS request quota"
            )
        if outcome is Outcome.TRANSIENT:
            return ProviderUnavailableError(
                f"{prefix}{tries}: {code} (HTTP {status}): {message} -- AWS KMS is failing "
                "transiently; retry later"
            )
        if code in ACCESS_CODES:
            return AccessDeniedError(
                f"{prefix}: {code}: {message} -- the caller needs kms:{operation} on this key "
                "(key policy or IAM policy, including any kms:EncryptionContext conditions), "
                "and valid credentials"
            )
        if code == "NotFoundException":
            return KeyNotFoundError(
                f"{prefix}: {code}: {message} -- check the key id/alias, the region and the account"
            )
        if code == "DisabledException":
            return KeyDisabledError(
                f"{prefix}: {code}: {message} -- enable the key (kms:EnableKey) or use another "
                "recipient"
            )
        if code == "KMSInvalidStateException":
            return _invalid_state(prefix, code, message)
        if code in UNWRAP_CODES and operation == "Decrypt":
            return UnwrapError(
                f"{prefix}: {code}: {message} -- the wrapped key is damaged, was made by another "
                "key, or the encryption context differs"
            )
        return ProviderError(f"{prefix}: {code}: {message}")
    name = type(exc).__name__
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return AccessDeniedError(
            f"{prefix}: {name}: {exc} -- no usable AWS credentials (environment, profile, "
            "SSO, instance or container role)"
        )
    if isinstance(exc, botocore.exceptions.SSLError):
        return ProviderUnavailableError(
            f"{prefix}: {name}: {exc} -- TLS to the KMS endpoint failed; check endpoint_url "
            "and the CA bundle (AWS_CA_BUNDLE)"
        )
    if isinstance(exc, _NETWORK_ERRORS):
        return ProviderUnavailableError(f"{prefix}{tries}: KMS endpoint unreachable: {name}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return ProviderError(f"{prefix}: {name}: {_safe_botocore_text(exc)}")
    return ProviderError(f"{prefix}: {name}: {exc}")
