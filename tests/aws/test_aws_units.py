"""Offline behaviour of the AWS KMS provider: URIs, settings, client cache, retry policy."""

from __future__ import annotations

import threading
import time

import pytest
from aws_testing import ACCOUNT, REGION
from botocore.exceptions import ClientError, EndpointConnectionError

import kmsenvelope_aws
import kmsenvelope_aws.plugin
from kmsenvelope import ConfigError, KeyEncryptionKey, ProviderRegistry, ProviderUnavailableError
from kmsenvelope.errors import ThrottledError
from kmsenvelope_aws import AwsKmsKey, ClientCache, ClientSpec, KeyRefKind, parse_key_uri
from kmsenvelope_aws.retry import RetryPolicy, call_with_retries
from kmsenvelope_aws.settings import ProviderSettings

KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
ARN = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{KEY_ID}"


# -- URIs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "kind", "kms_key_id", "region"),
    [
        (f"aws-kms:{ARN}", KeyRefKind.KEY_ARN, ARN, "eu-west-1"),
        (f"aws-kms:{KEY_ID}", KeyRefKind.KEY_ID, KEY_ID, None),
        (
            "aws-kms:mrk-1234abcd12ab34cd56ef1234567890ab",
            KeyRefKind.KEY_ID,
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            None,
        ),
        ("aws-kms:alias/payments", KeyRefKind.ALIAS, "alias/payments", None),
        ("aws-kms:alias/team_a/pay-ments", KeyRefKind.ALIAS, "alias/team_a/pay-ments", None),
        (
            f"aws-kms:arn:aws:kms:us-gov-west-1:{ACCOUNT}:alias/x",
            KeyRefKind.ALIAS_ARN,
            f"arn:aws:kms:us-gov-west-1:{ACCOUNT}:alias/x",
            "us-gov-west-1",
        ),
        (
            f"aws-kms:arn:aws-cn:kms:cn-north-1:{ACCOUNT}:key/{KEY_ID}",
            KeyRefKind.KEY_ARN,
            f"arn:aws-cn:kms:cn-north-1:{ACCOUNT}:key/{KEY_ID}",
            "cn-north-1",
        ),
    ],
)
def test_uri_forms(uri, kind, kms_key_id, region):
    ref = parse_key_uri(uri)
    assert ref.kind is kind
    assert ref.kms_key_id == kms_key_id
    assert ref.region == region
    assert ref.uri == uri
    assert ref.is_key_arn == (kind is KeyRefKind.KEY_ARN)


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("aws-kms:", "no key after the scheme"),
        ("local:payments", "does not start with"),
        (f"aws-kms: {KEY_ID}", "whitespace"),
        ("aws-kms:arn:aws:s3:::bucket", "not a KMS key or alias ARN"),
        (f"aws-kms:arn:aws:kms:eu-west-1:{ACCOUNT}:key/not-a-key-id", "is not a KMS key id"),
        (f"aws-kms:arn:aws:kms:eu-west-1:12345:key/{KEY_ID}", "not a KMS key or alias ARN"),
        ("aws-kms:alias/bad name", "whitespace"),
        ("aws-kms:alias/bad*name", "alias names may contain only"),
        ("aws-kms:payments", "neither an ARN, a key id nor alias/NAME"),
    ],
)
def test_bad_uris_are_config_errors(uri, fragment):
    with pytest.raises(ConfigError) as info:
        parse_key_uri(uri)
    assert fragment in str(info.value)
    # The factory reports the same error before any network call.
    with pytest.raises(ConfigError):
        AwsKmsKey(uri, {"region": REGION})


# -- settings ----------------------------------------------------------------------------------


def test_settings_defaults_are_bounded_and_secure():
    s = ProviderSettings.from_mapping({})
    assert (s.region, s.profile, s.endpoint_url) == (None, None, None)
    assert 1 < s.max_attempts <= 10
    assert 0 < s.connect_timeout <= 10
    assert 0 < s.read_timeout <= 60
    assert s.backoff_base <= s.backoff_max <= 10
    assert s.allow_http is False


def test_settings_accept_strings_from_environment_variables():
    s = ProviderSettings.from_mapping(
        {
            "max_attempts": "3",
            "connect_timeout": "1.5",
            "read_timeout": "2",
            "allow_http": "yes",
            "region": " eu-west-1 ",
            "backoff_base": "0",
            "backoff_max": "0.5",
        }
    )
    assert (s.max_attempts, s.connect_timeout, s.read_timeout) == (3, 1.5, 2.0)
    assert s.allow_http is True
    assert s.region == "eu-west-1"
    assert (s.backoff_base, s.backoff_max) == (0.0, 0.5)


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"regoin": "eu-west-1"}, "unknown setting 'regoin' in [providers.aws-kms] (did you mean"),
        ({"max_attempts": 0}, "'max_attempts' in [providers.aws-kms] must be a whole number from"),
        ({"max_attempts": 21}, "'max_attempts' in"),
        ({"max_attempts": True}, "'max_attempts' in"),
        ({"max_attempts": "lots"}, "'max_attempts' in"),
        ({"connect_timeout": 0}, "'connect_timeout' in [providers.aws-kms] must be a number more"),
        ({"read_timeout": "soon"}, "'read_timeout' in [providers.aws-kms] must be a number"),
        ({"read_timeout": float("inf")}, "'read_timeout' in"),
        ({"backoff_base": 2.0, "backoff_max": 1.0}, "'backoff_max' in [providers.aws-kms] must"),
        ({"endpoint_url": "kms.example.com"}, "must be an http(s):// URL"),
        ({"region": ""}, "'region' in [providers.aws-kms] must be a non-empty string"),
        ({"profile": 7}, "'profile' in [providers.aws-kms] must be a non-empty string"),
        ({"allow_http": "maybe"}, "'allow_http' in [providers.aws-kms] must be true or false"),
    ],
)
def test_bad_settings_are_config_errors(table, fragment):
    with pytest.raises(ConfigError) as info:
        ProviderSettings.from_mapping(table)
    assert fragment in str(info.value)
    assert "[providers.aws-kms]" in str(info.value)


# -- plugin registration -----------------------------------------------------------------------


def test_plugin_registers_aws_kms_scheme_in_code():
    registry = ProviderRegistry()
    registry.add_plugin(kmsenvelope_aws.plugin, name="aws-kms")
    assert set(registry.providers) == {"aws-kms"}
    kek = registry.open(f"aws-kms:{ARN}", {})
    assert isinstance(kek, AwsKmsKey)
    assert isinstance(kek, KeyEncryptionKey)
    assert kek.key_id == f"aws-kms:{ARN}"
    assert kek.region == "eu-west-1"  # the ARN's region, though AWS_DEFAULT_REGION differs


def test_plugin_loads_through_the_entry_point_when_allowed():
    registry = ProviderRegistry.load(allow=["aws-kms"])
    info = registry.providers["aws-kms"]
    assert info.distribution == "kmsenvelope-aws"
    assert info.plugin == "aws-kms"
    assert ProviderRegistry.load(allow=[]).providers == {}


# -- region and endpoint resolution ------------------------------------------------------------


def test_region_from_settings_then_chain(monkeypatch):
    assert AwsKmsKey(f"aws-kms:{KEY_ID}", {}).region == REGION  # AWS_DEFAULT_REGION
    assert AwsKmsKey("aws-kms:alias/x", {"region": "ap-south-1"}).region == "ap-south-1"
    # A region in the ARN wins over the settings.
    assert AwsKmsKey(f"aws-kms:{ARN}", {"region": "ap-south-1"}).region == "eu-west-1"


def test_no_region_anywhere_is_a_config_error(monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    kmsenvelope_aws.clear_client_cache()
    with pytest.raises(ConfigError) as info:
        AwsKmsKey("aws-kms:alias/payments", {})
    assert "no AWS region" in str(info.value)
    assert "aws-kms:alias/payments" in str(info.value)


def test_unknown_profile_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        AwsKmsKey("aws-kms:alias/payments", {"profile": "no-such-profile"})
    assert "no-such-profile" in str(info.value)


def test_plain_http_endpoint_refused_unless_loopback_or_allowed(monkeypatch):
    with pytest.raises(ConfigError) as info:
        AwsKmsKey(f"aws-kms:{ARN}", {"endpoint_url": "http://kms.internal.example:4566"})
    assert "not HTTPS" in str(info.value)
    # The same check applies to an endpoint that comes from the standard chain.
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", "http://kms.internal.example:4566")
    with pytest.raises(ConfigError):
        AwsKmsKey(f"aws-kms:{ARN}", {})
    kek = AwsKmsKey(f"aws-kms:{ARN}", {"allow_http": True})
    assert kek.client.meta.endpoint_url == "http://kms.internal.example:4566"
    kek = AwsKmsKey(f"aws-kms:{ARN}", {"endpoint_url": "http://127.0.0.1:4566"})
    assert kek.client.meta.endpoint_url == "http://127.0.0.1:4566"
    kek = AwsKmsKey(f"aws-kms:{ARN}", {"endpoint_url": "https://vpce-1.kms.eu-west-1.example"})
    assert kek.client.meta.endpoint_url == "https://vpce-1.kms.eu-west-1.example"


def test_injected_client_must_match_the_arn_region():
    client = ClientCache().client(ClientSpec(region="us-west-2"))
    with pytest.raises(ConfigError) as info:
        AwsKmsKey(f"aws-kms:{ARN}", {}, client=client)
    assert "eu-west-1" in str(info.value)
    assert "us-west-2" in str(info.value)


# -- client cache ------------------------------------------------------------------------------


def test_one_client_per_spec_shared_across_threads():
    cache = ClientCache()
    spec = ClientSpec(region=REGION, endpoint_url="http://127.0.0.1:9")
    seen: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        seen.append(cache.client(spec))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8
    assert all(c is seen[0] for c in seen)
    other = cache.client(ClientSpec(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    assert other is not seen[0]
    assert other.meta.region_name == "eu-west-1"


def test_clients_do_not_retry_on_their_own_and_use_the_timeouts():
    client = ClientCache().client(ClientSpec(region=REGION, connect_timeout=1.5, read_timeout=2.5))
    config = client.meta.config
    assert config.retries["total_max_attempts"] == 1
    assert (config.connect_timeout, config.read_timeout) == (1.5, 2.5)


def test_keks_share_the_process_wide_client():
    a = AwsKmsKey(f"aws-kms:{ARN}", {})
    b = AwsKmsKey(f"aws-kms:arn:aws:kms:eu-west-1:{ACCOUNT}:alias/other", {})
    assert a.client is b.client
    c = AwsKmsKey(f"aws-kms:{ARN}", {"read_timeout": 3})
    assert c.client is not a.client


# -- retry policy ------------------------------------------------------------------------------


def _throttle() -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "Encrypt",
    )


def test_backoff_is_jittered_exponential_and_capped():
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=6, backoff_base=0.1, backoff_max=0.25, sleep=sleeps.append)
    calls = 0

    def call() -> str:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise _throttle()
        return "ok"

    assert call_with_retries(policy, call, key="aws-kms:k", operation="Encrypt") == "ok"
    assert calls == 6
    assert len(sleeps) == 5
    for n, pause in enumerate(sleeps, 1):
        assert 0 <= pause <= min(0.25, 0.1 * 2 ** (n - 1))
    # Full jitter: over many draws the delays are spread, not constant.
    draws = {round(policy.delay(3), 6) for _ in range(50)}
    assert len(draws) > 10
    assert max(draws) <= 0.25


def test_retry_gives_up_after_max_attempts_with_the_right_error():
    policy = RetryPolicy(max_attempts=3, backoff_base=0, backoff_max=0)
    calls = 0

    def throttled() -> None:
        nonlocal calls
        calls += 1
        raise _throttle()

    with pytest.raises(ThrottledError) as info:
        call_with_retries(policy, throttled, key="aws-kms:k", operation="Encrypt")
    assert calls == 3
    assert "after 3 attempts" in str(info.value)
    assert "ThrottlingException" in str(info.value)

    def unreachable() -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/")

    with pytest.raises(ProviderUnavailableError) as info2:
        call_with_retries(policy, unreachable, key="aws-kms:k", operation="Decrypt")
    assert not isinstance(info2.value, ThrottledError)
    assert "EndpointConnectionError" in str(info2.value)


def test_non_aws_exceptions_are_not_retried_or_disguised():
    policy = RetryPolicy(max_attempts=5, backoff_base=0, backoff_max=0)
    calls = 0

    def buggy() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    start = time.monotonic()
    with pytest.raises(KeyError):
        call_with_retries(policy, buggy, key="aws-kms:k", operation="Encrypt")
    assert calls == 1
    assert time.monotonic() - start < 1
