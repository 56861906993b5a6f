"""Fixtures for the Cloud KMS provider: the KeyManagementService emulator of ``kms_emulator.py``
on free loopback ports (gRPC and REST), settings pointing at it, and keys.

The real ``google-cloud-kms`` client talks to it; nothing of the developer's own Google setup
(credentials, gcloud configuration, metadata server) leaks in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("google.cloud.kms_v1")
pytest.importorskip("kmsenvelope_gcp")

from cryptography.hazmat.primitives.asymmetric import rsa
from kms_emulator import SYMMETRIC, KmsEmulator

import kmsenvelope_gcp.plugin
from kmsenvelope import Config, Engine, ProviderRegistry
from kmsenvelope_gcp import clear_client_cache

FAST_RETRIES = {"retry_initial": 0.01, "retry_maximum": 0.05, "retry_deadline": 1.5}


@pytest.fixture(autouse=True)
def google_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """No ambient Google credentials, gcloud configuration or metadata server; fresh clients."""
    for name in list(os.environ):
        if name.startswith(("GOOGLE_", "CLOUDSDK_", "GCE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path_factory.mktemp("gcloud")))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    clear_client_cache()
    yield
    clear_client_cache()


@pytest.fixture(scope="session")
def rsa_pool() -> list[rsa.RSAPrivateKey]:
    """RSA-2048 key pairs made once per session; each emulator hands them to its versions."""
    return [rsa.generate_private_key(65537, 2048) for _ in range(4)]


@pytest.fixture
def emulator(rsa_pool: list[rsa.RSAPrivateKey]) -> Iterator[KmsEmulator]:
    """A fresh emulator (its own keys and fault switches) on free ports of 127.0.0.1."""
    kms = KmsEmulator(rsa_pool).start()
    try:
        yield kms
    finally:
        kms.stop()


@pytest.fixture
def settings(emulator: KmsEmulator) -> dict[str, Any]:
    """``[providers.gcp-kms]`` pointing at the emulator over gRPC, with quick retries."""
    return {"emulator_host": emulator.grpc_host, **FAST_RETRIES}


@pytest.fixture
def rest_settings(emulator: KmsEmulator) -> dict[str, Any]:
    """The same over the REST transport."""
    return {"emulator_host": emulator.rest_host, "transport": "rest", **FAST_RETRIES}


@pytest.fixture
def make_key(emulator: KmsEmulator) -> Callable[..., str]:
    """Create a key in the emulator; its ``gcp-kms:`` URI (versionless)."""
    counter = iter(range(1, 1_000_000))

    def make(algorithm: str = SYMMETRIC, **kw: Any) -> str:
        return "gcp-kms:" + emulator.create_key(f"key-{next(counter)}", algorithm=algorithm, **kw)

    return make


@pytest.fixture
def registry() -> ProviderRegistry:
    """A registry holding only the gcp-kms plugin, registered in code."""
    reg = ProviderRegistry()
    reg.add_plugin(kmsenvelope_gcp.plugin, name="gcp-kms")
    return reg


@pytest.fixture
def engine(registry: ProviderRegistry, settings: dict[str, Any]) -> Callable[..., Engine]:
    """A fresh engine configured like ``[providers.gcp-kms]`` = settings (may contact any
    gcp-kms key: strict decryption is tested in tests/core)."""

    def make(**overrides: Any) -> Engine:
        config = Config(providers={"gcp-kms": {**settings, **overrides}})
        return Engine(registry=registry, config=config, allow=["gcp-kms:*"])

    return make
