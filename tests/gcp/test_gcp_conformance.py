"""The core's provider conformance suite, run against the Cloud KMS provider and the emulator,
through the real google-cloud-kms client.

Symmetric keys (GOOGLE_SYMMETRIC_ENCRYPTION) bind the context as AAD: the suite checks that the
service refuses another context. RSA_DECRYPT_OAEP_* has no AAD: the class names it in
``algorithms_without_aad`` and the suite checks that the envelope's header MAC binds the context.
"""

from __future__ import annotations

from typing import Any

import pytest
from kms_emulator import KmsEmulator

from kmsenvelope.conformance import ProviderConformance
from kmsenvelope_gcp import ClientCache, GcpKmsKey

RSA_ALGORITHM = "RSA_DECRYPT_OAEP_2048_SHA256"


class _Conformance(ProviderConformance):
    @pytest.fixture
    def reopen(self, settings: dict[str, Any]) -> Any:
        # A fresh instance with its own, new client (new channel).
        return lambda uri: GcpKmsKey(uri, settings, clients=ClientCache())

    @pytest.fixture
    def unknown_key(self) -> str:
        return "gcp-kms:projects/test-project/locations/global/keyRings/ring/cryptoKeys/missing"


class TestSymmetricKey(_Conformance):
    """A symmetric key named without a version: Encrypt uses its primary version."""

    @pytest.fixture
    def kek(self, make_key, registry, settings):
        return registry.open(make_key(), settings)

    @pytest.fixture
    def other_kek(self, make_key, registry, settings):
        return registry.open(make_key(), settings)


class TestSymmetricKeyVersion(_Conformance):
    """A symmetric key named by one (non-primary) version."""

    @pytest.fixture
    def kek(self, make_key, registry, settings, emulator: KmsEmulator):
        uri = make_key(versions=2)
        return registry.open(f"{uri}/cryptoKeyVersions/1", settings)

    @pytest.fixture
    def unknown_key(self, make_key) -> str:
        return f"{make_key()}/cryptoKeyVersions/7"

    @pytest.fixture
    def other_kek(self, make_key, registry, settings):
        return registry.open(f"{make_key(versions=2)}/cryptoKeyVersions/1", settings)


class TestSymmetricKeyOverRest(_Conformance):
    """The same over the REST transport (HTTP/1.1 + JSON)."""

    @pytest.fixture
    def kek(self, make_key, registry, rest_settings):
        return registry.open(make_key(), rest_settings)

    @pytest.fixture
    def reopen(self, rest_settings: dict[str, Any]) -> Any:
        return lambda uri: GcpKmsKey(uri, rest_settings, clients=ClientCache())

    @pytest.fixture
    def other_kek(self, make_key, registry, rest_settings):
        return registry.open(make_key(), rest_settings)


class _Rsa(_Conformance):
    algorithms_without_aad = frozenset({r"RSA_DECRYPT_OAEP_\w+"})


class TestRsaKeyVersion(_Rsa):
    """An RSA_DECRYPT_OAEP key named by its version: wrapped locally, AsymmetricDecrypt."""

    @pytest.fixture
    def kek(self, make_key, registry, settings, emulator: KmsEmulator):
        kek = registry.open(f"{make_key(RSA_ALGORITHM)}/cryptoKeyVersions/1", settings)
        yield kek
        # RSA keys wrap locally: Encrypt is only the probe that learns the key is RSA (one per
        # thread that wraps before the first probe finished: the suite uses 4).
        assert emulator.calls["Encrypt"] <= 4

    @pytest.fixture
    def other_kek(self, make_key, registry, settings):
        return registry.open(f"{make_key(RSA_ALGORITHM)}/cryptoKeyVersions/1", settings)


class TestRsaKey(_Rsa):
    """An RSA key named without a version: its newest enabled version wraps."""

    @pytest.fixture
    def kek(self, make_key, registry, settings):
        return registry.open(make_key(RSA_ALGORITHM, versions=2), settings)

    @pytest.fixture
    def other_kek(self, make_key, registry, settings):
        return registry.open(make_key(RSA_ALGORITHM), settings)
