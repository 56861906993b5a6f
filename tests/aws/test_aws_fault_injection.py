"""Real AWS error responses over real HTTP: a front end on 127.0.0.1 forwards to moto and
injects the errors moto never sends (throttling, disabled, pending deletion, ...).

Unlike the Stubber tests, these go through botocore's HTTP stack and error parsing, and the
front end counts every request that actually reached the "service".
"""

from __future__ import annotations

import time

import pytest
from aws_testing import CONTEXT, OAEP_SHA256, FakeRsaKey

import kmsenvelope
from kmsenvelope import ConfigError, ProviderUnavailableError
from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDestroyedError,
    KeyDisabledError,
    ThrottledError,
)
from kmsenvelope_aws import AwsKmsKey

DEK = bytes(range(32, 64))


@pytest.fixture
def proxied(fault_kms, settings):
    return {**settings, "endpoint_url": fault_kms.url}


def test_throttled_twice_then_success_over_http(make_key, fault_kms, proxied):
    meta = make_key()
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", proxied)
    fault_kms.fail("Encrypt", "ThrottlingException", "Rate exceeded", times=2)
    fault_kms.fail("Decrypt", "ThrottlingException", "Rate exceeded", times=2)
    wrapped = kek.wrap(DEK, CONTEXT)
    assert kek.unwrap(wrapped, CONTEXT) == DEK
    assert fault_kms.count("Encrypt") == 3
    assert fault_kms.count("Decrypt") == 3


def test_throttled_forever_makes_exactly_max_attempts_requests(make_key, fault_kms, proxied):
    meta = make_key()
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", {**proxied, "max_attempts": 4})
    kek.resolve()
    fault_kms.fail("Encrypt", "ThrottlingException", "Rate exceeded", times=None)
    start = time.monotonic()
    with pytest.raises(ThrottledError) as info:
        kek.wrap(DEK, CONTEXT)
    assert time.monotonic() - start < 3
    # botocore's own retries are off: what reached the service is exactly max_attempts.
    assert fault_kms.count("Encrypt") == 4
    assert "ThrottlingException" in str(info.value)
    assert meta["Arn"] in str(info.value)


def test_service_unavailable_503_is_retried_then_unavailable(make_key, fault_kms, proxied):
    meta = make_key()
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", {**proxied, "max_attempts": 3})
    fault_kms.fail("DescribeKey", "KMSInternalException", "internal", status=500, times=None)
    with pytest.raises(ProviderUnavailableError) as info:
        kek.wrap(DEK, {})
    assert not isinstance(info.value, ThrottledError)
    assert fault_kms.count("DescribeKey") == 3
    assert "KMSInternalException" in str(info.value)


@pytest.mark.parametrize(
    ("operation", "code", "message", "expected"),
    [
        ("Decrypt", "DisabledException", "{arn} is disabled.", KeyDisabledError),
        ("Decrypt", "KMSInvalidStateException", "{arn} is pending deletion.", KeyDestroyedError),
        ("Encrypt", "DisabledException", "{arn} is disabled.", KeyDisabledError),
        (
            "Encrypt",
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/app is not authorized to perform: kms:Encrypt",
            AccessDeniedError,
        ),
    ],
)
def test_key_state_errors_over_http(
    make_key, fault_kms, proxied, operation, code, message, expected
):
    meta = make_key()
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", proxied)
    wrapped = kek.wrap(DEK, CONTEXT)  # moto happily wraps: it does not enforce key state
    fault_kms.fail(operation, code, message.format(arn=meta["Arn"]))
    if operation == "Decrypt":

        def call():
            return kek.unwrap(wrapped, CONTEXT)
    else:

        def call():
            return kek.wrap(DEK, CONTEXT)

    with pytest.raises(expected) as info:
        call()
    assert code in str(info.value)
    assert meta["Arn"] in str(info.value)
    # One refused request (after the good Encrypt of the setup): a key state is not retried.
    assert fault_kms.count(operation) == (2 if operation == "Encrypt" else 1)


def test_envelope_opens_with_the_other_key_while_one_is_unavailable(
    make_key, fault_kms, registry, proxied
):
    down, up = make_key(), make_key()
    engine = kmsenvelope.Engine(
        registry=registry,
        config=kmsenvelope.Config(providers={"aws-kms": {**proxied, "max_attempts": 2}}),
    )
    blob = engine.encrypt(
        b"two recipients", [f"aws-kms:{down['Arn']}", f"aws-kms:{up['Arn']}"], CONTEXT
    )
    fault_kms.fail(
        "Decrypt",
        "KMSInternalException",
        "internal",
        status=500,
        times=None,
        when=lambda body: body.get("KeyId") == down["Arn"],
    )
    assert engine.decrypt(blob, CONTEXT) == b"two recipients"
    decrypts = [body["KeyId"] for op, body in fault_kms.requests if op == "Decrypt"]
    assert decrypts == [down["Arn"], down["Arn"], up["Arn"]]


def test_rsa_envelope_round_trip_over_http(fault_kms, rsa_3072, registry, proxied):
    fake = FakeRsaKey(rsa_3072)
    fault_kms.answer(fake)
    engine = kmsenvelope.Engine(
        registry=registry, config=kmsenvelope.Config(providers={"aws-kms": proxied})
    )
    blobs = [engine.encrypt(b"rsa %d" % i, [fake.uri], CONTEXT) for i in range(3)]
    (recipient,) = kmsenvelope.inspect_envelope(blobs[0]).recipients
    assert recipient.algorithm == "RSAES_OAEP_SHA_256"
    assert recipient.key_id == fake.uri
    # Three envelopes, one DescribeKey and one GetPublicKey, no Encrypt at all.
    assert fault_kms.count("DescribeKey") == 1
    assert fault_kms.count("GetPublicKey") == 1
    assert fault_kms.count("Encrypt") == 0
    fresh = kmsenvelope.Engine(
        registry=registry,
        config=kmsenvelope.Config(providers={"aws-kms": proxied}),
        trusted_keys=[fake.uri],  # the user names the key (as --to or in recipients)
    )
    assert [fresh.decrypt(b, CONTEXT) for b in blobs] == [b"rsa 0", b"rsa 1", b"rsa 2"]
    assert fault_kms.count("Decrypt") == 3
    # Opened by key id, the key is resolved for unwrapping, but the public key is not fetched:
    # a decrypt-only principal needs no kms:GetPublicKey.
    by_id = AwsKmsKey(f"aws-kms:{fake.key_id}", proxied)
    assert by_id.unwrap(recipient, CONTEXT) == rsa_3072.decrypt(recipient.ciphertext, OAEP_SHA256)
    assert fault_kms.count("GetPublicKey") == 1
    assert fault_kms.count("DescribeKey") == 2
    # The key is disabled later: unwrap fails with the real KMS error.
    fault_kms.fail("Decrypt", "DisabledException", f"{fake.arn} is disabled.")
    with pytest.raises(KeyDisabledError):
        AwsKmsKey(fake.uri, proxied).unwrap(recipient, CONTEXT)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rsa_key_disabled_later_stops_wrapping_after_the_ttl(fault_kms, rsa_3072, proxied):
    fake = FakeRsaKey(rsa_3072)
    fault_kms.answer(fake)
    clock = Clock()
    kek = AwsKmsKey(fake.uri, {**proxied, "key_cache_ttl": "30"}, clock=clock)
    kek.wrap(DEK, CONTEXT)
    assert fault_kms.count("DescribeKey") == 1
    fake.state = "Disabled"
    clock.now += 29.0  # within the TTL: the local wrap trusts the state it saw
    wrapped = kek.wrap(DEK, CONTEXT)
    assert rsa_3072.decrypt(wrapped.ciphertext, OAEP_SHA256) == DEK
    assert fault_kms.count("DescribeKey") == 1
    clock.now += 1.0  # the TTL has passed: the state is looked up, and the wrap refused
    with pytest.raises(KeyDisabledError, match="KeyState=Disabled"):
        kek.wrap(DEK, CONTEXT)
    assert fault_kms.count("DescribeKey") == 2
    fake.state = "PendingDeletion"
    with pytest.raises(KeyDestroyedError, match="scheduled for deletion"):
        kek.wrap(DEK, CONTEXT)  # still refused on every try, never wrapped from a stale state
    fake.state = "Enabled"
    assert rsa_3072.decrypt(kek.wrap(DEK, CONTEXT).ciphertext, OAEP_SHA256) == DEK
    assert fault_kms.count("GetPublicKey") == 1  # the public key itself is fetched once


def test_rsa_key_cache_ttl_zero_checks_before_every_wrap(fault_kms, rsa_3072, proxied):
    fake = FakeRsaKey(rsa_3072)
    fault_kms.answer(fake)
    kek = AwsKmsKey(fake.uri, {**proxied, "key_cache_ttl": 0})
    for _ in range(3):
        kek.wrap(DEK, CONTEXT)
    assert fault_kms.count("DescribeKey") == 4  # the first resolution, then one per wrap
    fake.state = "Disabled"
    with pytest.raises(KeyDisabledError):
        kek.wrap(DEK, CONTEXT)


def test_symmetric_keys_are_not_described_again(make_key, fault_kms, proxied):
    """Every symmetric wrap is a KMS Encrypt, which checks the state itself."""
    meta = make_key()
    clock = Clock()
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", {**proxied, "key_cache_ttl": 0}, clock=clock)
    for _ in range(3):
        clock.now += 100
        kek.wrap(DEK, CONTEXT)
    assert fault_kms.count("DescribeKey") == 1
    assert fault_kms.count("Encrypt") == 3


@pytest.mark.parametrize("value", [-1, "soon", float("nan"), 86401, True])
def test_bad_key_cache_ttl_is_a_config_error(value, proxied):
    with pytest.raises(ConfigError, match=r"'key_cache_ttl' in \[providers\.aws-kms\]"):
        AwsKmsKey(
            "aws-kms:arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            {**proxied, "key_cache_ttl": value},
        )


def test_rsa_state_check_never_follows_a_repointed_alias(fault_kms, rsa_3072, proxied):
    """The TTL re-check describes the ARN resolved first: re-pointing the alias later does not
    change what this key object wraps with (or records), so its envelopes always decrypt."""
    first, second = FakeRsaKey(rsa_3072), FakeRsaKey(rsa_3072)
    target = {"key": first}

    def alias(operation, body):
        if body.get("KeyId") == "alias/rsa-writer" and operation == "DescribeKey":
            return 200, {"KeyMetadata": target["key"].metadata()}
        return first(operation, body) or second(operation, body)

    fault_kms.answer(alias)
    clock = Clock()
    kek = AwsKmsKey("aws-kms:alias/rsa-writer", {**proxied, "key_cache_ttl": 30}, clock=clock)
    assert kek.wrap(DEK, CONTEXT).key_id == first.uri
    target["key"] = second
    clock.now += 60
    again = kek.wrap(DEK, CONTEXT)
    assert again.key_id == first.uri
    assert rsa_3072.decrypt(again.ciphertext, OAEP_SHA256) == DEK
    described = [body["KeyId"] for op, body in fault_kms.requests if op == "DescribeKey"]
    assert described == ["alias/rsa-writer", first.arn]
