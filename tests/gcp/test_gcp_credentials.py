"""``credentials_file`` and Application Default Credentials, end to end: the real client signs
each request with the service account's key (a self-signed JWT), over TLS, to the emulator's
REST endpoint, which checks the signature; a key it does not know is UNAUTHENTICATED."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gcp_credentials import make_tls, service_account_file

from kmsenvelope.errors import AccessDeniedError
from kmsenvelope_gcp import ClientCache, GcpKmsKey

EMAIL = "wrapper@test-project.iam.gserviceaccount.com"
FAST = {"retry_initial": 0.01, "retry_maximum": 0.05, "retry_deadline": 1.0}


@pytest.fixture
def tls_endpoint(tmp_path: Path, emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    cert, key = make_tls(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)  # requests (the REST transport) trusts it
    return emulator.start_tls_rest(cert, key)


def test_credentials_file_signs_every_request(tmp_path, tls_endpoint, emulator, make_key, rsa_pool):
    emulator.principals[EMAIL] = rsa_pool[0].public_key()
    key_file = service_account_file(tmp_path, EMAIL, rsa_pool[0])
    settings = {"credentials_file": str(key_file), "transport": "rest",
                "api_endpoint": tls_endpoint, **FAST}  # fmt: skip
    kek = GcpKmsKey(make_key(), settings, clients=ClientCache())
    dek = os.urandom(32)
    assert kek.unwrap(kek.wrap(dek, {"a": "b"}), {"a": "b"}) == dek
    assert emulator.authenticated == [EMAIL, EMAIL]


def test_application_default_credentials(tmp_path, tls_endpoint, emulator, make_key, rsa_pool,
                                         monkeypatch):  # fmt: skip
    emulator.principals[EMAIL] = rsa_pool[0].public_key()
    monkeypatch.setenv(
        "GOOGLE_APPLICATION_CREDENTIALS", str(service_account_file(tmp_path, EMAIL, rsa_pool[0]))
    )
    settings = {"transport": "rest", "api_endpoint": tls_endpoint, **FAST}
    kek = GcpKmsKey(make_key(), settings, clients=ClientCache())
    kek.wrap(os.urandom(32), {})
    assert emulator.authenticated == [EMAIL]


def test_unknown_service_account_is_access_denied(tmp_path, tls_endpoint, emulator, make_key,
                                                  rsa_pool):  # fmt: skip
    emulator.principals[EMAIL] = rsa_pool[0].public_key()
    stranger = service_account_file(tmp_path, "stranger@test-project.iam.gserviceaccount.com",
                                    rsa_pool[1])  # fmt: skip
    settings = {"credentials_file": str(stranger), "transport": "rest",
                "api_endpoint": tls_endpoint, **FAST}  # fmt: skip
    with pytest.raises(AccessDeniedError, match="UNAUTHENTICATED"):
        GcpKmsKey(make_key(), settings, clients=ClientCache()).wrap(os.urandom(32), {})
    assert emulator.authenticated == []
