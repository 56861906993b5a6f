"""Fixtures for the AWS KMS provider: a moto server on 127.0.0.1, fake credentials, keys.

The moto server is started by the tests themselves (no manual step) and spoken to over HTTP
by real boto3. moto does not enforce key state and cannot decrypt RSA ciphertexts made
outside it, so those behaviours are tested with botocore's Stubber or with the
fault-injecting KMS front end in ``aws_testing.py``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from aws_testing import REGION, FaultInjectingKms
from cryptography.hazmat.primitives.asymmetric import rsa
from moto.server import ThreadedMotoServer

import kmsenvelope_aws.plugin
from kmsenvelope import Config, Engine, ProviderRegistry
from kmsenvelope_aws import clear_client_cache


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server in this process, on a free port of 127.0.0.1."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def aws_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Fake credentials and region; nothing from the developer's own AWS setup leaks in."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "KMSENVELOPE_")):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.mktemp("aws-home")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # Tests that go through the entry point must name the plugins they want.
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "")
    clear_client_cache()
    yield
    clear_client_cache()


@pytest.fixture
def settings(moto_url: str) -> dict[str, Any]:
    """The [providers.aws-kms] table pointing at moto, with quick retries."""
    return {"endpoint_url": moto_url, "backoff_base": 0.01, "backoff_max": 0.05}


@pytest.fixture(scope="session")
def kms_admin(moto_url: str) -> Callable[[str], Any]:
    """A plain boto3 KMS client per region, for setting up keys (not the provider's)."""
    clients: dict[str, Any] = {}

    def client(region: str = REGION) -> Any:
        if region not in clients:
            clients[region] = boto3.client(
                "kms",
                region_name=region,
                endpoint_url=moto_url,
                aws_access_key_id="admin",
                aws_secret_access_key="admin",
            )
        return clients[region]

    return client


@pytest.fixture
def make_key(kms_admin: Callable[[str], Any]) -> Callable[..., dict[str, Any]]:
    """Create a KMS key in moto; return its KeyMetadata (``Arn``, ``KeyId``, ...)."""

    def make(
        region: str = REGION,
        *,
        spec: str = "SYMMETRIC_DEFAULT",
        usage: str = "ENCRYPT_DECRYPT",
        alias: str | None = None,
    ) -> dict[str, Any]:
        client = kms_admin(region)
        meta: dict[str, Any] = client.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
        if alias is not None:
            client.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
        return meta

    return make


@pytest.fixture
def registry() -> ProviderRegistry:
    """A registry holding only the aws-kms plugin, registered in code."""
    reg = ProviderRegistry()
    reg.add_plugin(kmsenvelope_aws.plugin, name="aws-kms")
    return reg


@pytest.fixture
def engine(registry: ProviderRegistry, settings: dict[str, Any]) -> Callable[..., Engine]:
    """A fresh engine (fresh KEK cache) configured like ``[providers.aws-kms]`` = settings.

    It may contact any ``aws-kms`` key (``allow=["aws-kms:*"]``), so an envelope made by one
    engine opens in another: these tests are about the provider; strict decryption (only keys
    the user named) is tested in tests/core.
    """

    def make(**overrides: Any) -> Engine:
        table = {**settings, **overrides}
        config = Config(providers={"aws-kms": table})
        return Engine(registry=registry, config=config, allow=["aws-kms:*"])

    return make


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fault_kms(moto_url: str) -> Iterator[FaultInjectingKms]:
    """A KMS front end on 127.0.0.1 that forwards to moto unless told to answer itself."""
    proxy = FaultInjectingKms(upstream=moto_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def rsa_3072() -> rsa.RSAPrivateKey:
    """An RSA key pair the tests own (KMS would never hand out the private half)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.fixture(scope="session")
def rsa_3072_other() -> rsa.RSAPrivateKey:
    """A second RSA key pair, for a second fake RSA KMS key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)
