"""The core's provider conformance suite, run against SoftHSM2 for each PKCS#11 algorithm."""

from __future__ import annotations

import pytest

from kmsenvelope.conformance import ProviderConformance
from kmsenvelope_pkcs11 import create_key, open_key
from kmsenvelope_pkcs11.cloudhsm import CLOUDHSM


class TestAesGcm(ProviderConformance):
    """AES-256-GCM in the token, the context as AAD: the suite requires it to be bound."""

    @pytest.fixture
    def settings(self, softhsm):
        return softhsm.settings()

    @pytest.fixture
    def kek(self, aes_uri, settings):
        return open_key("pkcs11:token=kmsenv-test;object=aes-wrap", settings)

    @pytest.fixture
    def reopen(self, settings):
        return lambda uri: open_key(uri, settings)

    @pytest.fixture
    def unknown_key(self, softhsm):
        return "pkcs11:token=kmsenv-test;object=no-such-key"

    @pytest.fixture
    def other_kek(self, softhsm, settings):
        return open_key(softhsm.create_key("other-aes", "aes256"), settings)


class TestAesKwp(TestAesGcm):
    """AES-KWP (RFC 5649): no AAD and deterministic, known to the suite by its name."""

    @pytest.fixture
    def settings(self, softhsm):
        return softhsm.settings(aes_mechanism="kwp")


class TestRsaOaepSha1(ProviderConformance):
    """RSA-OAEP without a label: no AAD, the envelope's header MAC binds the context."""

    @pytest.fixture
    def settings(self, softhsm):
        return softhsm.settings(oaep_hash="sha1")  # SoftHSM2 only does SHA-1 OAEP

    @pytest.fixture
    def kek(self, rsa_uri, settings):
        return open_key("pkcs11:token=kmsenv-test;object=rsa-wrap;type=private", settings)

    @pytest.fixture
    def reopen(self, settings):
        return lambda uri: open_key(uri, settings)

    @pytest.fixture
    def unknown_key(self, softhsm):
        return "pkcs11:token=kmsenv-test;id=%DE%AD;type=private"

    @pytest.fixture
    def other_kek(self, softhsm, settings):
        return open_key(softhsm.create_key("other-rsa", "rsa2048"), settings)


class TestCloudHsmPresetOnSoftHsm(ProviderConformance):
    """``aws-cloudhsm:`` driven against SoftHSM2: the CloudHSM credentials path (CLOUDHSM_PIN as
    USER:PASSWORD), with the two mechanism defaults SoftHSM2 lacks set back to standard ones."""

    @pytest.fixture
    def settings(self, softhsm_bare, monkeypatch):
        softhsm_bare.init_token("hsm1", "app_cu:Passw0rd!")
        create_key(
            softhsm_bare.module, "hsm1", "app_cu:Passw0rd!", "cloud-key", scheme="aws-cloudhsm"
        )
        monkeypatch.setenv("CLOUDHSM_PIN", "app_cu:Passw0rd!")
        monkeypatch.setenv("CLOUDHSM_ROLE", "crypto-user")
        return {"module": softhsm_bare.module, "gcm_iv": "host"}

    @pytest.fixture
    def kek(self, settings):
        return open_key("aws-cloudhsm:object=cloud-key", settings, CLOUDHSM)

    @pytest.fixture
    def reopen(self, settings):
        return lambda uri: open_key(uri, settings, CLOUDHSM)

    @pytest.fixture
    def unknown_key(self, settings):
        return "aws-cloudhsm:token=hsm1;object=missing"

    @pytest.fixture
    def other_kek(self, softhsm_bare, settings):
        uri = create_key(
            softhsm_bare.module, "hsm1", "app_cu:Passw0rd!", "other-key", scheme="aws-cloudhsm"
        )
        return open_key(uri, settings, CLOUDHSM)
