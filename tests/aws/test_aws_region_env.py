"""``AWS_REGION`` gives the aws-kms provider a region (boto3 itself reads only
``AWS_DEFAULT_REGION``): the ``region`` setting, then ``AWS_REGION``, then
``AWS_DEFAULT_REGION`` or the profile's region; a region in an ARN always wins."""

from __future__ import annotations

import pytest
from aws_testing import OTHER_REGION, REGION

from kmsenvelope import ConfigError
from kmsenvelope_aws import AwsKmsKey, clear_client_cache
from kmsenvelope_aws.settings import ProviderSettings

DEK = bytes(range(32))
CONTEXT = {"purpose": "region"}


def test_aws_region_alone_gives_the_region(make_key, settings, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", OTHER_REGION)
    clear_client_cache()
    meta = make_key(OTHER_REGION)
    kek = AwsKmsKey(f"aws-kms:{meta['KeyId']}", settings)
    assert kek.region == OTHER_REGION
    assert kek.unwrap(kek.wrap(DEK, CONTEXT), CONTEXT) == DEK


def test_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_REGION", "eu-north-1")  # AWS_DEFAULT_REGION is REGION
    assert AwsKmsKey("aws-kms:alias/x", {}).region == "eu-north-1"
    assert AwsKmsKey("aws-kms:alias/x", {"region": "ap-south-1"}).region == "ap-south-1"
    arn = "arn:aws:kms:sa-east-1:111122223333:alias/x"
    assert AwsKmsKey(f"aws-kms:{arn}", {}).region == "sa-east-1"
    config = tmp_path / "config"
    config.write_text("[profile p]\nregion = ca-central-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    clear_client_cache()
    assert AwsKmsKey("aws-kms:alias/x", {"profile": "p"}).region == "eu-north-1"
    monkeypatch.delenv("AWS_REGION")
    assert AwsKmsKey("aws-kms:alias/x", {}).region == REGION  # AWS_DEFAULT_REGION
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    clear_client_cache()
    assert AwsKmsKey("aws-kms:alias/x", {"profile": "p"}).region == "ca-central-1"


def test_settings_record_where_the_region_came_from():
    assert ProviderSettings.from_mapping({}, env={"AWS_REGION": " eu-north-1 "}).region == (
        "eu-north-1"
    )
    assert ProviderSettings.from_mapping({"region": "x-1"}, env={"AWS_REGION": "y-1"}).region == (
        "x-1"
    )
    assert ProviderSettings.from_mapping({}, env={"AWS_REGION": ""}).region is None
    assert ProviderSettings.from_mapping({}, env={}).region is None


def test_no_region_anywhere_still_names_aws_region(monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    clear_client_cache()
    with pytest.raises(ConfigError, match="AWS_REGION"):
        AwsKmsKey("aws-kms:alias/payments", {})
