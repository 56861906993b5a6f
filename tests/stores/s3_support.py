"""An S3 (and KMS) endpoint for store tests: the moto server on a free loopback port, started by
the tests, spoken to over HTTP by real boto3; and helpers to fill and read a bucket."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server in this process, on a free port of 127.0.0.1 (S3 with conditional writes,
    and KMS)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The environment a user has: the standard AWS chain pointing at moto (nothing of the
    developer's own AWS setup), the local, aws-kms and stores plugins, journals in tmp_path."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_S3": moto_url,
        "KMSENVELOPE_PROVIDERS__AWS_KMS__ENDPOINT_URL": moto_url,
        "KMSENVELOPE_PLUGINS": "local,aws-kms,stores",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def s3_client(moto_url: str) -> Any:
    """A plain boto3 S3 client (the test's, not the store's)."""
    return boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(max_pool_connections=32),
    )


def kms_key_arn(moto_url: str) -> str:
    """A new symmetric KMS key in moto."""
    kms = boto3.client(
        "kms",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return str(kms.create_key()["KeyMetadata"]["Arn"])


def new_bucket(s3: Any) -> str:
    name = f"envelopes-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _backend() -> Any:
    """The moto S3 backend the in-process server serves (setting up and checking a thousand
    objects through it takes a fraction of a second; over HTTP, several)."""
    return s3_backends[ACCOUNT]["aws"]


def put_all(s3: Any, bucket: str, objects: Mapping[str, bytes]) -> None:
    """Store ``objects`` (key -> bytes) in ``bucket``, as PutObject would."""
    backend = _backend()
    for key, data in objects.items():
        backend.put_object(bucket, key, data)
    some = next(iter(objects))
    assert s3.get_object(Bucket=bucket, Key=some)["Body"].read() == objects[some]  # served


def get_all(s3: Any, bucket: str, keys: list[str]) -> dict[str, bytes]:
    """The content of ``keys`` (one read over HTTP, to be sure it is what S3 serves)."""
    backend = _backend()
    out = {key: bytes(backend.get_object(bucket, key).value) for key in keys}
    assert s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read() == out[keys[0]]
    return out


def listing(s3: Any, bucket: str) -> dict[str, str]:
    """Every object of ``bucket`` and its ETag."""
    out: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            out[obj["Key"]] = obj["ETag"]
    return out


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m kmsenvelope ARGS`` in the test's environment, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
