"""Responses the test controls, through botocore's Stubber: the exact KMS requests the provider
makes, RSA local wrapping with a key pair the test owns, and the real AWS error responses moto
never sends (disabled, pending deletion, throttling, access denied, ...).

The Stubber answers inside the real boto3 client (parameter validation, events, error
parsing into ``ClientError``) without a network round trip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from aws_testing import ACCOUNT, CONTEXT, OAEP_SHA256, REGION
from botocore.stub import Stubber
from cryptography.hazmat.primitives.asymmetric import rsa

from kmsenvelope import (
    Config,
    ConfigError,
    Engine,
    ProviderError,
    ProviderRegistry,
    ProviderUnavailableError,
)
from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    ThrottledError,
    UnwrapError,
)
from kmsenvelope_aws import AwsKmsKey, ClientCache, ClientSpec

KEY_ID = "0b5c6f5e-6f3a-4b53-9a39-2f4a8c1d2e3f"
ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{KEY_ID}"
URI = f"aws-kms:{ARN}"
DEK = bytes(range(100, 132))
BLOB = b"\x01\x02\x03" + b"kms-ciphertext" * 10
FAST = {"backoff_base": 0.001, "backoff_max": 0.002}


class Stubbed:
    """A KEK whose boto3 client answers from a Stubber queue."""

    def __init__(self, uri: str = URI, **settings: object) -> None:
        client = ClientCache().client(ClientSpec(region=REGION, endpoint_url="http://127.0.0.1:9"))
        self.kek = AwsKmsKey(uri, {**FAST, **settings}, client=client)
        self.stub = Stubber(client)

    def describe(self, spec: str = "SYMMETRIC_DEFAULT", state: str = "Enabled") -> None:
        algorithms = (
            ["SYMMETRIC_DEFAULT"]
            if spec == "SYMMETRIC_DEFAULT"
            else ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
        )
        self.stub.add_response(
            "describe_key",
            {
                "KeyMetadata": {
                    "KeyId": KEY_ID,
                    "Arn": ARN,
                    "AWSAccountId": ACCOUNT,
                    "KeyState": state,
                    "Enabled": state == "Enabled",
                    "KeyUsage": "ENCRYPT_DECRYPT",
                    "KeySpec": spec,
                    "EncryptionAlgorithms": algorithms,
                }
            },
        )

    def public_key(self, private: rsa.RSAPrivateKey, spec: str = "RSA_3072") -> None:
        from cryptography.hazmat.primitives import serialization

        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.stub.add_response(
            "get_public_key",
            {
                "KeyId": ARN,
                "PublicKey": der,
                "KeySpec": spec,
                "KeyUsage": "ENCRYPT_DECRYPT",
                "EncryptionAlgorithms": ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"],
            },
            expected_params={"KeyId": ARN},
        )

    def encrypt_ok(self, context: dict[str, str] | None = None) -> None:
        expected: dict[str, object] = {
            "KeyId": ARN,
            "Plaintext": DEK,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }
        if context:
            expected["EncryptionContext"] = context
        self.stub.add_response(
            "encrypt",
            {"CiphertextBlob": BLOB, "KeyId": ARN, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"},
            expected_params=expected,
        )

    def decrypt_ok(
        self,
        blob: bytes = BLOB,
        context: dict[str, str] | None = None,
        algorithm: str = "SYMMETRIC_DEFAULT",
        key_id: str = ARN,
    ) -> None:
        expected: dict[str, object] = {
            "KeyId": ARN,
            "CiphertextBlob": blob,
            "EncryptionAlgorithm": algorithm,
        }
        if context:
            expected["EncryptionContext"] = context
        self.stub.add_response(
            "decrypt",
            {"Plaintext": DEK, "KeyId": key_id, "EncryptionAlgorithm": algorithm},
            expected_params=expected,
        )

    def error(
        self, method: str, code: str, message: str = "", status: int = 400, times: int = 1
    ) -> None:
        for _ in range(times):
            self.stub.add_client_error(
                method,
                service_error_code=code,
                service_message=message,
                http_status_code=status,
            )

    def recipient(self, algorithm: str = "SYMMETRIC_DEFAULT", blob: bytes = BLOB):
        from kmsenvelope import WrappedKey

        return WrappedKey("aws-kms", URI, algorithm, blob)


@pytest.fixture
def kms() -> Iterator[Stubbed]:
    stubbed = Stubbed()
    with stubbed.stub:
        yield stubbed
        stubbed.stub.assert_no_pending_responses()


# -- the requests the provider sends -----------------------------------------------------------


def test_symmetric_wrap_and_unwrap_send_key_context_and_algorithm(kms):
    kms.describe()
    kms.encrypt_ok(CONTEXT)
    kms.decrypt_ok(context=CONTEXT)
    wrapped = kms.kek.wrap(DEK, CONTEXT)
    assert (wrapped.provider, wrapped.key_id) == ("aws-kms", URI)
    assert (wrapped.algorithm, wrapped.ciphertext) == ("SYMMETRIC_DEFAULT", BLOB)
    assert kms.kek.unwrap(wrapped, CONTEXT) == DEK


def test_empty_context_sends_no_encryption_context(kms):
    kms.describe()
    kms.encrypt_ok()
    kms.decrypt_ok()
    assert kms.kek.unwrap(kms.kek.wrap(DEK, {}), {}) == DEK


def test_alias_is_resolved_once_and_never_sent_again():
    s = Stubbed("aws-kms:alias/payments")
    with s.stub:
        s.stub.add_response(
            "describe_key",
            {
                "KeyMetadata": {
                    "KeyId": KEY_ID,
                    "Arn": ARN,
                    "KeyState": "Enabled",
                    "KeyUsage": "ENCRYPT_DECRYPT",
                    "KeySpec": "SYMMETRIC_DEFAULT",
                }
            },
            expected_params={"KeyId": "alias/payments"},
        )
        s.encrypt_ok()  # expected KeyId: the ARN, not the alias
        s.encrypt_ok()
        s.decrypt_ok()
        first = s.kek.wrap(DEK, {})
        assert first.key_id == URI
        assert s.kek.wrap(DEK, {}).key_id == URI
        assert s.kek.unwrap(first, {}) == DEK
        s.stub.assert_no_pending_responses()


# -- RSA: local wrap with the public key, unwrap through KMS -----------------------------------


@pytest.mark.parametrize("bits", [3072, 4096])
def test_rsa_wraps_locally_and_unwraps_through_kms(kms, rsa_3072, bits):
    private = (
        rsa_3072 if bits == 3072 else rsa.generate_private_key(public_exponent=65537, key_size=4096)
    )
    spec = f"RSA_{bits}"
    kms.describe(spec)
    kms.public_key(private, spec)
    wrapped = kms.kek.wrap(DEK, CONTEXT)
    again = kms.kek.wrap(DEK, CONTEXT)  # no KMS call: an unstubbed call would fail the test
    assert wrapped.algorithm == "RSAES_OAEP_SHA_256"
    assert wrapped.key_id == URI
    assert len(wrapped.ciphertext) == bits // 8
    assert wrapped.ciphertext != again.ciphertext
    # The test's own private key opens what the provider wrapped: OAEP with SHA-256.
    assert private.decrypt(wrapped.ciphertext, OAEP_SHA256) == DEK
    # Unwrap goes to KMS Decrypt with the algorithm, and without an encryption context.
    kms.decrypt_ok(wrapped.ciphertext, algorithm="RSAES_OAEP_SHA_256")
    assert kms.kek.unwrap(wrapped, CONTEXT) == DEK


def test_rsa_public_key_of_the_wrong_size_is_refused(kms, rsa_3072):
    kms.describe("RSA_4096")
    kms.public_key(rsa_3072, "RSA_4096")
    with pytest.raises(ProviderError) as info:
        kms.kek.wrap(DEK, {})
    assert "4096-bit RSA key" in str(info.value)


def test_disabled_rsa_key_is_refused_before_wrapping_locally(kms):
    kms.describe("RSA_3072", state="Disabled")
    with pytest.raises(KeyDisabledError) as info:
        kms.kek.wrap(DEK, {})
    assert ARN in str(info.value)


def test_rsa_key_pending_deletion_is_refused(kms):
    kms.describe("RSA_3072", state="PendingDeletion")
    with pytest.raises(KeyDestroyedError):
        kms.kek.wrap(DEK, {})


def test_key_without_oaep_sha256_is_a_config_error(kms):
    kms.stub.add_response(
        "describe_key",
        {
            "KeyMetadata": {
                "KeyId": KEY_ID,
                "Arn": ARN,
                "KeyState": "Enabled",
                "KeyUsage": "ENCRYPT_DECRYPT",
                "KeySpec": "RSA_3072",
                "EncryptionAlgorithms": ["RSAES_OAEP_SHA_1"],
            }
        },
    )
    with pytest.raises(ConfigError) as info:
        kms.kek.wrap(DEK, {})
    assert "RSAES_OAEP_SHA_256" in str(info.value)


# -- AWS errors, each mapped to its library error ----------------------------------------------

ERRORS = [
    ("encrypt", "DisabledException", f"{ARN} is disabled.", KeyDisabledError),
    ("encrypt", "KMSInvalidStateException", f"{ARN} is pending deletion.", KeyDestroyedError),
    ("encrypt", "KMSInvalidStateException", f"{ARN} is pending import.", KeyDisabledError),
    (
        "encrypt",
        "AccessDeniedException",
        f"User: arn:aws:iam::{ACCOUNT}:user/app is not authorized to perform: kms:Encrypt on "
        f"resource: {ARN}",
        AccessDeniedError,
    ),
    (
        "encrypt",
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
        AccessDeniedError,
    ),
    ("encrypt", "NotFoundException", f"Key '{ARN}' does not exist", KeyNotFoundError),
    ("encrypt", "ValidationException", "1 validation error detected", ProviderError),
    ("decrypt", "DisabledException", f"{ARN} is disabled.", KeyDisabledError),
    ("decrypt", "KMSInvalidStateException", f"{ARN} is pending deletion.", KeyDestroyedError),
    ("decrypt", "KMSInvalidStateException", f"{ARN} is pending import.", KeyDisabledError),
    (
        "decrypt",
        "AccessDeniedException",
        "not authorized to perform: kms:Decrypt",
        AccessDeniedError,
    ),
    (
        "decrypt",
        "IncorrectKeyException",
        "The key ID in the request does not identify a KMS key that can perform this operation.",
        UnwrapError,
    ),
    ("decrypt", "InvalidCiphertextException", "", UnwrapError),
    ("decrypt", "InvalidKeyUsageException", "", UnwrapError),
    ("decrypt", "NotFoundException", "", KeyNotFoundError),
    ("describe_key", "NotFoundException", "Alias is not found.", KeyNotFoundError),
    ("describe_key", "AccessDeniedException", "not authorized: kms:DescribeKey", AccessDeniedError),
]


@pytest.mark.parametrize(("method", "code", "message", "expected"), ERRORS)
def test_aws_error_maps_to_library_error(kms, method, code, message, expected):
    if method == "encrypt":
        kms.describe()
    kms.error(method, code, message)  # one response: a retry would hit an empty queue
    if method == "decrypt":

        def call():
            return kms.kek.unwrap(kms.recipient(), CONTEXT)
    else:

        def call():
            return kms.kek.wrap(DEK, CONTEXT)

    with pytest.raises(expected) as info:
        call()
    assert type(info.value) is expected
    text = str(info.value)
    assert code in text
    assert ARN in text
    assert DEK.hex() not in text


def test_get_public_key_denied(kms):
    kms.describe("RSA_3072")
    kms.error("get_public_key", "AccessDeniedException", "not authorized: kms:GetPublicKey")
    with pytest.raises(AccessDeniedError) as info:
        kms.kek.wrap(DEK, {})
    assert "kms:GetPublicKey" in str(info.value)


def test_decrypt_by_another_key_is_refused(kms):
    other = ARN.replace(KEY_ID, "11111111-2222-3333-4444-555555555555")
    kms.decrypt_ok(key_id=other)
    with pytest.raises(UnwrapError) as info:
        kms.kek.unwrap(kms.recipient(), {})
    assert other in str(info.value)


@pytest.mark.parametrize(
    "returned",
    [
        ARN.replace(KEY_ID, "11111111-2222-3333-4444-555555555555"),  # another key
        f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/payments",  # not a key ARN
        "definitely-not-an-arn-at-all",
    ],
)
def test_describe_returning_another_key_is_refused(kms, returned):
    kms.stub.add_response(
        "describe_key", {"KeyMetadata": {"KeyId": KEY_ID, "Arn": returned, "KeyState": "Enabled"}}
    )
    with pytest.raises(ProviderError) as info:
        kms.kek.wrap(DEK, {})
    assert type(info.value) is ProviderError
    assert returned in str(info.value)


# -- throttling and transient failures ---------------------------------------------------------


def test_throttled_twice_then_success(kms):
    kms.describe()
    kms.error("encrypt", "ThrottlingException", "Rate exceeded", times=2)
    kms.encrypt_ok(CONTEXT)
    kms.error("decrypt", "ThrottlingException", "Rate exceeded", times=2)
    kms.decrypt_ok(context=CONTEXT)
    wrapped = kms.kek.wrap(DEK, CONTEXT)
    assert wrapped.ciphertext == BLOB
    assert kms.kek.unwrap(wrapped, CONTEXT) == DEK


def test_throttled_twice_then_success_through_the_engine():
    s = Stubbed()
    with s.stub:
        s.describe()
        s.error("encrypt", "ThrottlingException", "Rate exceeded", times=2)
        s.stub.add_response("encrypt", {"CiphertextBlob": BLOB, "KeyId": ARN})
        engine = Engine(registry=ProviderRegistry(), config=Config())
        blob = engine.encrypt(b"data", [s.kek], CONTEXT)
        s.stub.assert_no_pending_responses()
    assert engine.inspect(blob).recipients[0].ciphertext == BLOB


def test_throttled_forever_is_throttled_error():
    s = Stubbed(max_attempts=4)
    with s.stub:
        s.describe()
        s.error("encrypt", "ThrottlingException", "Rate exceeded", times=4)
        start = time.monotonic()
        with pytest.raises(ThrottledError) as info:
            s.kek.wrap(DEK, CONTEXT)
        assert time.monotonic() - start < 2
        s.stub.assert_no_pending_responses()  # exactly max_attempts calls
    text = str(info.value)
    assert "ThrottlingException" in text
    assert "after 4 attempts" in text
    assert ARN in text
    assert isinstance(info.value, ProviderUnavailableError)  # exit code 7 like 'unavailable'


def test_http_429_without_a_known_code_counts_as_throttling():
    s = Stubbed(max_attempts=2)
    with s.stub:
        s.error("decrypt", "SomethingNew", "slow down", status=429, times=2)
        with pytest.raises(ThrottledError):
            s.kek.unwrap(s.recipient(), {})


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("KMSInternalException", 500),
        ("DependencyTimeoutException", 503),
        ("KeyUnavailableException", 500),
        ("InternalFailure", 500),
        ("ServiceUnavailable", 503),
    ],
)
def test_transient_errors_retried_then_unavailable(code, status):
    s = Stubbed(max_attempts=3)
    with s.stub:
        s.error("decrypt", code, "try again", status=status, times=2)
        s.decrypt_ok()
        assert s.kek.unwrap(s.recipient(), {}) == DEK
        s.error("decrypt", code, "try again", status=status, times=3)
        with pytest.raises(ProviderUnavailableError) as info:
            s.kek.unwrap(s.recipient(), {})
        s.stub.assert_no_pending_responses()
    assert not isinstance(info.value, ThrottledError)
    assert code in str(info.value)
    assert "after 3 attempts" in str(info.value)


def test_max_attempts_one_means_no_retry():
    s = Stubbed(max_attempts=1)
    with s.stub:
        s.error("decrypt", "ThrottlingException", "Rate exceeded")
        with pytest.raises(ThrottledError) as info:
            s.kek.unwrap(s.recipient(), {})
        s.stub.assert_no_pending_responses()
    assert "after 1 attempt:" in str(info.value)
