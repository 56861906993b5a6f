"""Errors raised below HTTP (transport, credential, SDK) map to the right kmsenvelope error."""

from __future__ import annotations

import pytest
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from kmsenvelope import KmsEnvelopeError, ProviderError, ProviderUnavailableError
from kmsenvelope.errors import AccessDeniedError, KeyNotFoundError
from kmsenvelope_azure.errors import map_azure_error
from kmsenvelope_azure.uri import parse_key_uri

KEY = parse_key_uri("azure-kv:https://v.vault.azure.net/keys/k")


@pytest.mark.parametrize(
    ("exc", "expected", "match"),
    [
        (ServiceRequestError("connection refused"), ProviderUnavailableError, "unreachable"),
        (ServiceResponseError("read timed out"), ProviderUnavailableError, "timed out"),
        (
            ServiceRequestError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
            ProviderUnavailableError,
            "ca_bundle",
        ),
        (ClientAuthenticationError("no credential found"), AccessDeniedError, "authenticate"),
        (HttpResponseError("no response at all"), ProviderError, "no response"),
        (AzureError("odd"), ProviderError, "odd"),
        (ValueError("challenge resource mismatch"), ProviderError, "refused to authenticate"),
        (RuntimeError("bug"), ProviderError, "RuntimeError"),
    ],
)
def test_mapping(exc: BaseException, expected: type[KmsEnvelopeError], match: str) -> None:
    mapped = map_azure_error(exc, key=KEY, operation="unwrapKey", version="v1")
    assert type(mapped) is expected
    assert match in str(mapped)
    assert "azure-kv:https://v.vault.azure.net/keys/k/v1" in str(mapped)


def test_credential_failure_caused_by_the_network() -> None:
    try:
        try:
            raise ServiceRequestError("connection refused")
        except ServiceRequestError as inner:
            raise ClientAuthenticationError("Authentication failed") from inner
    except ClientAuthenticationError as exc:
        mapped = map_azure_error(exc, key=KEY, operation="get")
    assert isinstance(mapped, ProviderUnavailableError)
    assert "identity endpoint" in str(mapped)


def test_kmsenvelope_errors_pass_through() -> None:
    error = KeyNotFoundError("already mapped")
    assert map_azure_error(error, key=KEY, operation="get") is error
