"""The core's provider conformance suite, run against the AWS KMS provider.

Symmetric keys run against moto, named by ARN, by key id and by alias. RSA keys run against
``FakeRsaKey`` behind the fault-injecting front end (moto cannot decrypt RSA ciphertexts
made outside it), still through real boto3 over HTTP.
"""

from __future__ import annotations

import pytest
from aws_testing import FakeRsaKey, unique_alias, unknown_key_arn

from kmsenvelope.conformance import ProviderConformance
from kmsenvelope_aws import AwsKmsKey, ClientCache


class _AgainstMoto(ProviderConformance):
    @pytest.fixture
    def reopen(self, settings):
        # A fresh instance with its own, new client.
        return lambda uri: AwsKmsKey(uri, settings, clients=ClientCache())

    @pytest.fixture
    def unknown_key(self):
        return f"aws-kms:{unknown_key_arn()}"

    @pytest.fixture
    def other_kek(self, make_key, registry, settings):
        return registry.open(f"aws-kms:{make_key()['Arn']}", settings)


class TestConformanceByArn(_AgainstMoto):
    @pytest.fixture
    def kek(self, make_key, registry, settings):
        return registry.open(f"aws-kms:{make_key()['Arn']}", settings)


class TestConformanceByKeyId(_AgainstMoto):
    @pytest.fixture
    def kek(self, make_key, registry, settings):
        return registry.open(f"aws-kms:{make_key()['KeyId']}", settings)


class TestConformanceByAlias(_AgainstMoto):
    @pytest.fixture
    def kek(self, make_key, registry, settings):
        alias = unique_alias()
        make_key(alias=alias)
        return registry.open(f"aws-kms:{alias}", settings)

    @pytest.fixture
    def unknown_key(self):
        return f"aws-kms:{unique_alias()}"


class TestConformanceRsa(ProviderConformance):
    """RSAES_OAEP_SHA_256 has no AAD: the suite expects the envelope's header MAC to bind the
    context (it reads the algorithm each wrap records)."""

    @pytest.fixture
    def kek(self, fault_kms, rsa_3072, registry):
        fake = FakeRsaKey(rsa_3072)
        fault_kms.answer(fake)
        settings = {"endpoint_url": fault_kms.url, "backoff_base": 0.01, "backoff_max": 0.05}
        kek = registry.open(fake.uri, settings)
        yield kek
        assert fault_kms.count("Encrypt") == 0  # RSA keys never wrap through KMS

    @pytest.fixture
    def reopen(self, fault_kms):
        settings = {"endpoint_url": fault_kms.url}
        return lambda uri: AwsKmsKey(uri, settings, clients=ClientCache())

    @pytest.fixture
    def other_kek(self, fault_kms, rsa_3072_other, registry):
        other = FakeRsaKey(rsa_3072_other)
        fault_kms.answer(other)
        return registry.open(other.uri, {"endpoint_url": fault_kms.url})

    @pytest.fixture
    def unknown_key(self):
        return f"aws-kms:{unknown_key_arn()}"
