"""The local software HSM passes the provider conformance suite, for AES and RSA keys."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kmsenvelope import KeyEncryptionKey
from kmsenvelope.conformance import ProviderConformance
from kmsenvelope.local import Keystore
from kmsenvelope.local.provider import factory


def _reopen(keystore_dir: object) -> Callable[[str], KeyEncryptionKey]:
    return lambda uri: factory(uri, {"keystore": str(keystore_dir)})


class TestLocalAesConformance(ProviderConformance):
    @pytest.fixture
    def kek(self, keystore: Keystore, keystore_dir: object) -> KeyEncryptionKey:
        keystore.create_key("conf-aes", "aes256")
        return factory("local:conf-aes", {"keystore": str(keystore_dir)})

    @pytest.fixture
    def reopen(self, keystore_dir: object) -> Callable[[str], KeyEncryptionKey]:
        return _reopen(keystore_dir)

    @pytest.fixture
    def unknown_key(self) -> str:
        return "local:does-not-exist"

    @pytest.fixture
    def other_kek(self, keystore: Keystore, keystore_dir: object) -> KeyEncryptionKey:
        keystore.create_key("conf-other", "aes256")
        return factory("local:conf-other", {"keystore": str(keystore_dir)})


class TestLocalRsaConformance(TestLocalAesConformance):
    @pytest.fixture
    def kek(self, keystore: Keystore, keystore_dir: object) -> KeyEncryptionKey:
        keystore.create_key("conf-rsa", "rsa3072")
        return factory("local:conf-rsa", {"keystore": str(keystore_dir)})
