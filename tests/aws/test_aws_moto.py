"""The AWS KMS provider against a moto server, through real boto3 over HTTP."""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from aws_testing import CONTEXT, OTHER_REGION, REGION, unique_alias, unknown_key_arn

import kmsenvelope
from kmsenvelope import (
    AuthenticationError,
    ConfigError,
    NoRecipientError,
    ProviderUnavailableError,
    WrappedKey,
)
from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    ThrottledError,
    UnwrapError,
)
from kmsenvelope_aws import AwsKmsKey, ClientCache

DEK = bytes(range(32))


def _count_requests(kek: AwsKmsKey, operation: str = "") -> list[str]:
    """Record every HTTP request the KEK's client sends (one entry per attempt)."""
    seen: list[str] = []

    def before_send(request, **kwargs):
        seen.append(request.headers.get("X-Amz-Target", b"").decode().rpartition(".")[2])

    event = "before-send.kms" + (f".{operation}" if operation else "")
    kek.client.meta.events.register(event, before_send)
    return seen


# -- round trips -------------------------------------------------------------------------------


def test_round_trip_by_arn_records_arn_and_binds_context(make_key, settings):
    meta = make_key()
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", settings)
    wrapped = kek.wrap(DEK, CONTEXT)
    assert wrapped.provider == "aws-kms"
    assert wrapped.key_id == f"aws-kms:{meta['Arn']}"
    assert wrapped.algorithm == "SYMMETRIC_DEFAULT"
    assert DEK not in wrapped.ciphertext
    assert kek.unwrap(wrapped, CONTEXT) == DEK
    # Same key, other context: KMS refuses (the context is the KMS EncryptionContext).
    with pytest.raises(UnwrapError) as info:
        kek.unwrap(wrapped, {**CONTEXT, "tenant": "t-2"})
    assert "InvalidCiphertextException" in str(info.value)
    assert meta["Arn"] in str(info.value)
    with pytest.raises(UnwrapError):
        kek.unwrap(wrapped, {})


def test_round_trip_by_key_id(make_key, settings):
    meta = make_key()
    kek = AwsKmsKey(f"aws-kms:{meta['KeyId']}", settings)
    assert kek.key_id == f"aws-kms:{meta['KeyId']}"
    wrapped = kek.wrap(DEK, CONTEXT)
    assert wrapped.key_id == f"aws-kms:{meta['Arn']}"
    assert kek.resolve() == meta["Arn"]
    assert AwsKmsKey(wrapped.key_id, settings).unwrap(wrapped, CONTEXT) == DEK
    assert kek.unwrap(wrapped, CONTEXT) == DEK


def test_engine_round_trip_by_alias_records_the_key_arn(make_key, engine, kms_admin):
    alias = unique_alias()
    first = make_key(alias=alias)
    blob = engine().encrypt(b"pay me", [f"aws-kms:{alias}"], CONTEXT)

    info = kmsenvelope.inspect_envelope(blob)
    (recipient,) = info.recipients
    assert recipient.provider == "aws-kms"
    assert recipient.key_id == f"aws-kms:{first['Arn']}"
    assert "alias" not in recipient.key_id

    # Point the alias at another key: the envelope still opens with the key that wrapped it,
    # and new envelopes go to the new key.
    second = make_key()
    kms_admin(REGION).update_alias(AliasName=alias, TargetKeyId=second["KeyId"])
    assert engine().decrypt(blob, CONTEXT) == b"pay me"
    newer = engine().encrypt(b"again", [f"aws-kms:{alias}"], CONTEXT)
    assert kmsenvelope.inspect_envelope(newer).recipients[0].key_id == f"aws-kms:{second['Arn']}"


def test_round_trip_by_alias_arn(make_key, settings):
    alias = unique_alias()
    meta = make_key(alias=alias)
    alias_arn = meta["Arn"].split(":key/")[0] + ":" + alias
    kek = AwsKmsKey(f"aws-kms:{alias_arn}", settings)
    wrapped = kek.wrap(DEK, {})
    assert wrapped.key_id == f"aws-kms:{meta['Arn']}"
    assert kek.unwrap(wrapped, {}) == DEK


def test_engine_with_context_and_wrong_context(make_key, engine):
    meta = make_key()
    uri = f"aws-kms:{meta['Arn']}"
    blob = engine().encrypt(b"x" * 5000, [uri], CONTEXT, chunk_size=1024)
    assert engine().decrypt(blob, CONTEXT) == b"x" * 5000
    assert engine().decrypt(blob) == b"x" * 5000  # the context travels in the header
    with pytest.raises(AuthenticationError):
        engine().decrypt(blob, {"tenant": "t-2"})
    # A recipient handed to KMS with another context is refused by KMS itself.
    (recipient,) = kmsenvelope.inspect_envelope(blob).recipients
    with pytest.raises(UnwrapError):
        engine().open_key(uri).unwrap(recipient, {"app": "billing", "tenant": "t-2"})


def test_two_kms_keys_in_two_regions_in_one_envelope(make_key, engine, settings):
    east = make_key(REGION)
    west = make_key(OTHER_REGION)
    # Settings name us-east-1; the ARN's region wins for the eu-west-1 key.
    eng = engine(region=REGION)
    blob = eng.encrypt(b"two keys", [f"aws-kms:{east['Arn']}", f"aws-kms:{west['Arn']}"], CONTEXT)
    recipients = kmsenvelope.inspect_envelope(blob).recipients
    assert [r.key_id for r in recipients] == [f"aws-kms:{east['Arn']}", f"aws-kms:{west['Arn']}"]
    assert eng.open_key(f"aws-kms:{west['Arn']}").region == OTHER_REGION
    assert engine().decrypt(blob, CONTEXT) == b"two keys"
    # Each key alone opens the envelope; a key that is not a recipient's is refused locally.
    east_kek = AwsKmsKey(f"aws-kms:{east['Arn']}", settings)
    west_kek = AwsKmsKey(f"aws-kms:{west['Arn']}", settings)
    with pytest.raises(UnwrapError) as info:
        west_kek.unwrap(recipients[0], CONTEXT)
    assert "not by this key" in str(info.value)
    for kek in (east_kek, west_kek):
        assert engine().decrypt(blob, CONTEXT, keys=[kek]) == b"two keys"


def test_endpoint_from_aws_endpoint_url_kms(make_key, moto_url, monkeypatch):
    meta = make_key()
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", moto_url)
    kek = AwsKmsKey(f"aws-kms:{meta['KeyId']}", {})
    assert kek.client.meta.endpoint_url == moto_url
    assert kek.unwrap(kek.wrap(DEK, CONTEXT), CONTEXT) == DEK


def test_profile_from_the_shared_config_files(make_key, moto_url, monkeypatch, tmp_path):
    meta = make_key(OTHER_REGION)
    config = tmp_path / "config"
    config.write_text(f"[profile kmsenv]\nregion = {OTHER_REGION}\nendpoint_url = {moto_url}\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[kmsenv]\naws_access_key_id = p\naws_secret_access_key = p\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    kek = AwsKmsKey(f"aws-kms:{meta['KeyId']}", {"profile": "kmsenv"})
    assert kek.region == OTHER_REGION
    assert kek.unwrap(kek.wrap(DEK, CONTEXT), CONTEXT) == DEK


def test_config_file_table(make_key, registry, moto_url, tmp_path):
    meta = make_key()
    path = tmp_path / "kmsenvelope.toml"
    path.write_text(
        f'recipients = ["aws-kms:{meta["KeyId"]}"]\n'
        "[providers.aws-kms]\n"
        f'region = "{REGION}"\n'
        f'endpoint_url = "{moto_url}"\n'
        "max_attempts = 3\nconnect_timeout = 2.0\nread_timeout = 5.0\n"
    )
    config = kmsenvelope.load_config(path, env={})
    eng = kmsenvelope.Engine(registry=registry, config=config)
    blob = eng.encrypt(b"configured", None, CONTEXT)
    assert kmsenvelope.inspect_envelope(blob).recipients[0].key_id == f"aws-kms:{meta['Arn']}"
    assert eng.decrypt(blob, CONTEXT) == b"configured"


# -- failures that moto can show ---------------------------------------------------------------


def test_unknown_key_alias_and_region(settings):
    for uri in (
        f"aws-kms:{unknown_key_arn()}",
        f"aws-kms:{unique_alias()}",
        f"aws-kms:{unknown_key_arn(OTHER_REGION)}",
    ):
        with pytest.raises(KeyNotFoundError) as info:
            AwsKmsKey(uri, settings).wrap(DEK, {})
        assert "NotFoundException" in str(info.value)
        assert uri in str(info.value)


def test_disabled_key_refused_on_wrap(make_key, kms_admin, settings):
    meta = make_key()
    kms_admin(REGION).disable_key(KeyId=meta["KeyId"])
    with pytest.raises(KeyDisabledError) as info:
        AwsKmsKey(f"aws-kms:{meta['Arn']}", settings).wrap(DEK, {})
    assert "Disabled" in str(info.value)
    assert meta["Arn"] in str(info.value)


def test_failed_resolution_is_not_cached(make_key, kms_admin, settings):
    meta = make_key()
    kms_admin(REGION).disable_key(KeyId=meta["KeyId"])
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", settings)
    with pytest.raises(KeyDisabledError):
        kek.wrap(DEK, {})
    kms_admin(REGION).enable_key(KeyId=meta["KeyId"])
    assert kek.unwrap(kek.wrap(DEK, {}), {}) == DEK


def test_pending_deletion_key_refused_on_wrap(make_key, kms_admin, settings):
    meta = make_key()
    kms_admin(REGION).schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
    with pytest.raises(KeyDestroyedError) as info:
        AwsKmsKey(f"aws-kms:{meta['KeyId']}", settings).wrap(DEK, {})
    assert "PendingDeletion" in str(info.value)
    assert "CancelKeyDeletion" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "usage", "fragment"),
    [
        ("RSA_2048", "ENCRYPT_DECRYPT", "KeySpec=RSA_2048"),
        ("ECC_NIST_P256", "SIGN_VERIFY", "KeyUsage=SIGN_VERIFY"),
        ("HMAC_256", "GENERATE_VERIFY_MAC", "KeyUsage=GENERATE_VERIFY_MAC"),
    ],
)
def test_unsuitable_keys_are_config_errors(make_key, settings, spec, usage, fragment):
    meta = make_key(spec=spec, usage=usage)
    with pytest.raises(ConfigError) as info:
        AwsKmsKey(f"aws-kms:{meta['Arn']}", settings).wrap(DEK, {})
    assert fragment in str(info.value)


def test_rsa_key_in_moto_wraps_locally(make_key, settings):
    meta = make_key(spec="RSA_3072")
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", settings)
    sent = _count_requests(kek)
    first = kek.wrap(DEK, CONTEXT)
    second = kek.wrap(DEK, CONTEXT)
    assert first.algorithm == "RSAES_OAEP_SHA_256"
    assert first.key_id == f"aws-kms:{meta['Arn']}"
    assert len(first.ciphertext) == 384
    assert first.ciphertext != second.ciphertext  # OAEP is randomized
    assert sent == ["DescribeKey", "GetPublicKey"]  # once, then no KMS call per wrap


def test_missing_credentials_is_access_denied(make_key, settings, monkeypatch):
    meta = make_key()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AccessDeniedError) as info:
        AwsKmsKey(f"aws-kms:{meta['Arn']}", settings).wrap(DEK, {})
    assert "NoCredentialsError" in str(info.value)


def test_recipient_of_another_provider_or_algorithm_is_refused(make_key, settings):
    meta = make_key()
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", settings)
    good = kek.wrap(DEK, {})
    for bad in (
        WrappedKey("memory", "memory:x", good.algorithm, good.ciphertext),
        WrappedKey("aws-kms", "aws-kms:alias/x", good.algorithm, good.ciphertext),
        WrappedKey("aws-kms", good.key_id, "RSAES_OAEP_SHA_1", good.ciphertext),
    ):
        with pytest.raises(UnwrapError):
            kek.unwrap(bad, {})


# -- unreachable endpoints ---------------------------------------------------------------------


def test_unreachable_endpoint_is_unavailable_after_bounded_retries(closed_port, settings):
    kek = AwsKmsKey(
        f"aws-kms:{unknown_key_arn()}",
        {**settings, "endpoint_url": f"http://127.0.0.1:{closed_port}", "max_attempts": 3},
    )
    sent = _count_requests(kek)
    start = time.monotonic()
    with pytest.raises(ProviderUnavailableError) as info:
        kek.wrap(DEK, {})
    assert time.monotonic() - start < 5
    assert not isinstance(info.value, ThrottledError)
    assert sent == ["DescribeKey"] * 3  # exactly max_attempts: botocore does not retry too
    message = str(info.value)
    assert "after 3 attempts" in message
    assert "EndpointConnectionError" in message
    assert f"127.0.0.1:{closed_port}" in message

    recipient = WrappedKey("aws-kms", kek.key_id, "SYMMETRIC_DEFAULT", b"\x01" * 64)
    with pytest.raises(ProviderUnavailableError):
        kek.unwrap(recipient, {})


def test_unreachable_endpoint_through_the_engine(make_key, engine, closed_port):
    meta = make_key()
    uri = f"aws-kms:{meta['Arn']}"
    blob = engine().encrypt(b"later", [uri], CONTEXT)
    down = engine(endpoint_url=f"http://127.0.0.1:{closed_port}", max_attempts=2)
    with pytest.raises(NoRecipientError) as info:
        down.decrypt(blob, CONTEXT)
    (attempt,) = info.value.attempts
    assert attempt.key_id == uri
    assert "unreachable" in attempt.reason
    with pytest.raises(ProviderUnavailableError):
        down.encrypt(b"now", [uri], CONTEXT)


def test_read_timeout_is_retried_then_unavailable(settings):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        kek = AwsKmsKey(
            f"aws-kms:{unknown_key_arn()}",
            {
                **settings,
                "endpoint_url": f"http://127.0.0.1:{port}",
                "max_attempts": 2,
                "read_timeout": 0.3,
            },
        )
        sent = _count_requests(kek)
        start = time.monotonic()
        with pytest.raises(ProviderUnavailableError) as info:
            kek.wrap(DEK, {})
        assert time.monotonic() - start < 5
    assert len(sent) == 2
    assert "ReadTimeoutError" in str(info.value)


def test_tls_failure_is_not_retried(moto_url, settings):
    https = moto_url.replace("http://", "https://")  # moto speaks plain HTTP
    kek = AwsKmsKey(f"aws-kms:{unknown_key_arn()}", {**settings, "endpoint_url": https})
    sent = _count_requests(kek)
    with pytest.raises(ProviderUnavailableError) as info:
        kek.wrap(DEK, {})
    assert len(sent) == 1
    assert "SSLError" in str(info.value)


# -- concurrency -------------------------------------------------------------------------------


def test_threads_share_one_resolution_and_one_client(make_key, settings):
    alias = unique_alias()
    meta = make_key(alias=alias)
    kek = AwsKmsKey(f"aws-kms:{alias}", settings, clients=ClientCache())
    describes = _count_requests(kek, "DescribeKey")
    barrier = threading.Barrier(8)

    def work(i: int) -> bool:
        barrier.wait()
        dek = os.urandom(32)
        ctx = {"n": str(i)}
        wrapped = kek.wrap(dek, ctx)
        return wrapped.key_id == f"aws-kms:{meta['Arn']}" and kek.unwrap(wrapped, ctx) == dek

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))
    assert describes == ["DescribeKey"]


def test_no_key_material_in_errors_or_reprs(make_key, settings):
    meta = make_key()
    kek = AwsKmsKey(f"aws-kms:{meta['Arn']}", settings)
    wrapped = kek.wrap(DEK, CONTEXT)
    with pytest.raises(UnwrapError) as info:
        kek.unwrap(wrapped, {"other": "context"})
    for text in (str(info.value), repr(kek), repr(wrapped)):
        assert DEK.hex() not in text
        assert repr(DEK) not in text
        assert wrapped.ciphertext.hex() not in text
