"""The Cloud KMS provider against the emulator, through the real google-cloud-kms client: what
reaches the service (AAD, CRC32C), what the stanza records, key states, rotation, permissions,
retries and unavailability, over gRPC and REST."""

from __future__ import annotations

import os
import socket
from typing import Any

import grpc
import pytest

from kmsenvelope import WrappedKey
from kmsenvelope.errors import (
    AccessDeniedError,
    ConfigError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    ProviderError,
    ProviderUnavailableError,
    ThrottledError,
    UnwrapError,
)
from kmsenvelope.format.header import encode_context
from kmsenvelope_gcp import ClientCache, GcpKmsKey

CONTEXT = {"tenant": "t-1", "purpose": "tests"}
RSA = "RSA_DECRYPT_OAEP_2048_SHA256"
RING = "gcp-kms:projects/test-project/locations/global/keyRings/ring/cryptoKeys"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_key(uri: str, settings: dict[str, Any], **kw: Any) -> GcpKmsKey:
    return GcpKmsKey(uri, settings, clients=ClientCache(), **kw)


# -- what reaches the service ---------------------------------------------------------------------


def test_context_is_sent_as_canonical_aad_both_ways(make_key, settings, emulator):
    kek = open_key(make_key(), settings)
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, CONTEXT)
    assert kek.unwrap(wrapped, CONTEXT) == dek
    expected = b"kmsenvelope-gcp-kms/v1\x00" + encode_context(CONTEXT)
    sent = [(method, aad) for method, _name, aad in emulator.received]
    assert sent == [("Encrypt", expected), ("Decrypt", expected)]
    assert wrapped.params == {"aad": "context-v1"}


def test_other_context_is_refused_by_the_service(make_key, settings, emulator):
    kek = open_key(make_key(), settings)
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    with pytest.raises(UnwrapError, match="INVALID_ARGUMENT"):
        kek.unwrap(wrapped, {**CONTEXT, "tenant": "t-2"})
    assert emulator.calls["Decrypt"] == 1


def test_stanza_records_the_version_the_service_reports(make_key, settings, emulator):
    uri = make_key(versions=3)
    emulator.set_primary(uri.removeprefix("gcp-kms:") + "/cryptoKeyVersions/2")
    wrapped = open_key(uri, settings).wrap(os.urandom(32), {})
    assert wrapped.key_id == f"{uri}/cryptoKeyVersions/2"
    assert wrapped.provider == "gcp-kms"
    assert wrapped.algorithm == "GOOGLE_SYMMETRIC_ENCRYPTION"
    pinned = open_key(f"{uri}/cryptoKeyVersions/1", settings).wrap(os.urandom(32), {})
    assert pinned.key_id == f"{uri}/cryptoKeyVersions/1"


# -- CRC32C both ways ---------------------------------------------------------------------------


def call(kek: GcpKmsKey, method: str, wrapped: WrappedKey) -> object:
    """One Encrypt (a wrap) or one Decrypt (an unwrap of ``wrapped``)."""
    if method == "Encrypt":
        return kek.wrap(os.urandom(32), CONTEXT)
    return kek.unwrap(wrapped, CONTEXT)


@pytest.mark.parametrize("method", ["Encrypt", "Decrypt"])
def test_request_damaged_in_transit_is_refused_by_the_service(make_key, settings, emulator, method):
    kek = open_key(make_key(), settings)
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    emulator.corrupt_requests(method)
    with pytest.raises(ProviderError, match=r"INVALID_ARGUMENT: The checksum in field \w+_crc32c"):
        call(kek, method, wrapped)


@pytest.mark.parametrize("method", ["Encrypt", "Decrypt"])
def test_response_damaged_in_transit_is_refused(make_key, settings, emulator, method):
    kek = open_key(make_key(), settings)
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, CONTEXT)
    emulator.corrupt_responses(method)
    with pytest.raises(ProviderError, match=r"does not match its (ciphertext|plaintext)_crc32c"):
        call(kek, method, wrapped)
    assert kek.unwrap(wrapped, CONTEXT) == dek  # the next, undamaged, answer is fine


def test_response_that_did_not_verify_our_checksums_is_refused(make_key, settings, emulator):
    kek = open_key(make_key(), settings)
    emulator.unverified("Encrypt")
    with pytest.raises(ProviderError, match="verified_plaintext_crc32c is false"):
        kek.wrap(os.urandom(32), CONTEXT)


def test_rsa_public_key_and_asymmetric_decrypt_are_checked(make_key, settings, emulator):
    uri = f"{make_key(RSA)}/cryptoKeyVersions/1"
    emulator.corrupt_responses("GetPublicKey")
    with pytest.raises(ProviderError, match="pem_crc32c"):
        open_key(uri, settings).wrap(os.urandom(32), {})
    kek = open_key(uri, settings)
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, {})
    emulator.corrupt_responses("AsymmetricDecrypt")
    with pytest.raises(ProviderError, match="plaintext_crc32c"):
        kek.unwrap(wrapped, {})
    emulator.unverified("AsymmetricDecrypt")
    with pytest.raises(ProviderError, match="verified_ciphertext_crc32c is false"):
        kek.unwrap(wrapped, {})
    emulator.corrupt_requests("AsymmetricDecrypt")
    with pytest.raises(ProviderError, match="checksum in field ciphertext_crc32c"):
        kek.unwrap(wrapped, {})
    assert kek.unwrap(wrapped, {}) == dek


# -- RSA keys ------------------------------------------------------------------------------------


def test_rsa_wraps_locally_with_the_public_key(make_key, settings, emulator):
    uri = make_key(RSA)
    kek = open_key(uri, settings)
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, CONTEXT)
    assert wrapped.key_id == f"{uri}/cryptoKeyVersions/1"
    assert wrapped.algorithm == RSA
    # Only the RSA-OAEP private key of that version opens it: checked with pyca/cryptography.
    private = emulator.keys[uri.removeprefix("gcp-kms:")].versions[1].private_key
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    sha256 = hashes.SHA256()
    assert (
        private.decrypt(wrapped.ciphertext, padding.OAEP(padding.MGF1(sha256), sha256, None)) == dek
    )
    calls = dict(emulator.calls)
    for _ in range(3):
        kek.wrap(os.urandom(32), CONTEXT)
    assert dict(emulator.calls) == calls  # cached: no call per wrap
    assert kek.unwrap(wrapped, CONTEXT) == dek


def test_versionless_rsa_key_uses_newest_enabled_version(make_key, settings, emulator):
    uri = make_key(RSA, versions=3)
    name = uri.removeprefix("gcp-kms:")
    emulator.set_state(f"{name}/cryptoKeyVersions/3", "DISABLED")
    # Three versions, two per page: the client's pager fetches both pages.
    wrapped = open_key(uri, settings).wrap(os.urandom(32), {})
    assert wrapped.key_id == f"{uri}/cryptoKeyVersions/2"


def test_rsa_public_key_is_fetched_again_after_the_ttl(make_key, settings, emulator):
    uri = f"{make_key(RSA)}/cryptoKeyVersions/1"
    clock = Clock()
    kek = open_key(uri, {**settings, "key_cache_ttl": 30}, clock=clock)
    kek.wrap(os.urandom(32), {})
    emulator.set_state(uri.removeprefix("gcp-kms:"), "DISABLED")
    clock.now += 29
    kek.wrap(os.urandom(32), {})  # within the TTL: still the cached public key
    clock.now += 2
    with pytest.raises(KeyDisabledError, match="DISABLED"):
        kek.wrap(os.urandom(32), {})


# -- key states, names, permissions -----------------------------------------------------------


def test_disabled_and_destroyed_versions_are_refused(make_key, settings, emulator):
    uri = make_key()
    version = uri.removeprefix("gcp-kms:") + "/cryptoKeyVersions/1"
    kek = open_key(uri, settings)
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    emulator.set_state(version, "DISABLED")
    with pytest.raises(KeyDisabledError, match=r"FAILED_PRECONDITION.*DISABLED"):
        kek.wrap(os.urandom(32), CONTEXT)
    with pytest.raises(KeyDisabledError):
        kek.unwrap(wrapped, CONTEXT)
    emulator.set_state(version, "DESTROYED")
    with pytest.raises(KeyDestroyedError, match="DESTROYED"):
        kek.unwrap(wrapped, CONTEXT)


def test_disabled_rsa_version_says_so(make_key, settings, emulator):
    uri = f"{make_key(RSA)}/cryptoKeyVersions/1"
    emulator.set_state(uri.removeprefix("gcp-kms:"), "DISABLED")
    with pytest.raises(KeyDisabledError, match="DISABLED"):
        open_key(uri, settings).wrap(os.urandom(32), {})


def test_unknown_key_and_version(settings, make_key):
    with pytest.raises(KeyNotFoundError, match="NOT_FOUND"):
        open_key(f"{RING}/nope", settings).wrap(os.urandom(32), {})
    with pytest.raises(KeyNotFoundError):
        open_key(f"{make_key()}/cryptoKeyVersions/9", settings).wrap(os.urandom(32), {})


def test_permission_denied_names_the_permission(make_key, settings, emulator):
    uri = make_key()
    emulator.deny(uri.removeprefix("gcp-kms:"))
    with pytest.raises(AccessDeniedError) as caught:
        open_key(uri, settings).wrap(os.urandom(32), {})
    assert "cloudkms.cryptoKeyVersions.useToEncrypt" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unwrap_refuses_another_keys_stanza_without_a_call(make_key, settings, emulator):
    kek = open_key(make_key(), settings)
    other = open_key(make_key(), settings).wrap(os.urandom(32), {})
    before = emulator.calls["Decrypt"]
    with pytest.raises(UnwrapError, match="another key"):
        kek.unwrap(other, {})
    bad = WrappedKey("gcp-kms", f"{RING}/x", "GOOGLE_SYMMETRIC_ENCRYPTION", b"x")
    with pytest.raises(UnwrapError, match="no version"):
        kek.unwrap(bad, {})
    assert emulator.calls["Decrypt"] == before


@pytest.mark.parametrize(
    "uri",
    [
        "gcp-kms:projects/p/locations/global/keyRings/r",
        "gcp-kms:projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/0",
        "gcp-kms:projects/p/locations/global/keyRings/r/cryptoKeys/k/",
        "gcp-kms:projects/p/locations/global/keyRings/r/cryptoKeys/k?x=1",
        "gcp-kms://projects/p/locations/global/keyRings/r/cryptoKeys/k",
        "gcp-kms:projects/p/locations/global/keyRings/r/cryptoKeys/" + "k" * 64,
        "aws-kms:projects/p/locations/global/keyRings/r/cryptoKeys/k",
    ],
)
def test_bad_uris(uri):
    with pytest.raises(ConfigError) as caught:
        GcpKmsKey(uri, {})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"emulator_host": "127.0.0.1"}, "must be HOST:PORT"),
        ({"emulator_host": "127.0.0.1:99999"}, "must be HOST:PORT"),
        ({"emulator_host": "kms.example.com:9090"}, "allow_remote_emulator"),
        ({"transport": "http"}, "must be one of: grpc, rest"),
        ({"credentials_file": "/no/such/file.json"}, "not a readable file"),
        ({"emulator_host": "127.0.0.1:1", "api_endpoint": "x:1"}, "not used with emulator_host"),
        ({"api_endpoint": "https://cloudkms.googleapis.com"}, "HOST or HOST:PORT"),
        ({"retry_deadline": -1}, "retry_deadline"),
        ({"emulator_hots": "127.0.0.1:1"}, "did you mean 'emulator_host'"),
    ],
)
def test_bad_settings(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        GcpKmsKey(f"{RING}/k", settings)


def test_remote_emulator_needs_opt_in():
    kek = GcpKmsKey(
        f"{RING}/k", {"emulator_host": "kms.example.com:9090", "allow_remote_emulator": True}
    )
    assert kek.settings.emulator_host == "kms.example.com:9090"


def test_no_application_default_credentials_is_access_denied():
    kek = GcpKmsKey(f"{RING}/k", {"retry_deadline": 0})
    with pytest.raises(AccessDeniedError, match="application-default login"):
        kek.wrap(os.urandom(32), {})


def test_unreadable_credentials_file_is_a_config_error(tmp_path):
    bad = tmp_path / "sa.json"
    bad.write_text('{"type": "service_account"}')
    kek = GcpKmsKey(f"{RING}/k", {"credentials_file": str(bad)})
    with pytest.raises(ConfigError, match="credentials_file"):
        kek.wrap(os.urandom(32), {})


# -- retries and unavailability ------------------------------------------------------------------


def test_unavailable_is_retried_by_the_sdk(make_key, settings, emulator):
    kek = open_key(make_key(), settings)
    dek = os.urandom(32)
    emulator.fail_next(3)
    wrapped = kek.wrap(dek, CONTEXT)
    assert emulator.calls["Encrypt"] == 4
    emulator.fail_next(2, methods=["Decrypt"])
    assert kek.unwrap(wrapped, CONTEXT) == dek
    assert emulator.calls["Decrypt"] == 3


def test_no_retries_when_the_deadline_is_zero(make_key, settings, emulator):
    kek = open_key(make_key(), {**settings, "retry_deadline": 0})
    emulator.fail_next(1)
    with pytest.raises(ProviderUnavailableError, match="UNAVAILABLE"):
        kek.wrap(os.urandom(32), {})
    assert emulator.calls["Encrypt"] == 1


def test_quota_exhaustion_ends_as_throttled(make_key, settings, emulator):
    kek = open_key(make_key(), {**settings, "retry_deadline": 0.3})
    emulator.fail_next(1000, grpc.StatusCode.RESOURCE_EXHAUSTED)
    with pytest.raises(ThrottledError, match="RESOURCE_EXHAUSTED"):
        kek.wrap(os.urandom(32), {})
    assert emulator.calls["Encrypt"] > 1


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_unreachable_service_is_unavailable(transport):
    settings = {
        "emulator_host": f"127.0.0.1:{closed_port()}",
        "transport": transport,
        "retry_initial": 0.01,
        "retry_maximum": 0.05,
        "retry_deadline": 0.5,
    }
    with pytest.raises(ProviderUnavailableError) as caught:
        GcpKmsKey(f"{RING}/k", settings).wrap(os.urandom(32), {})
    assert "\n" not in str(caught.value)


# -- REST transport ------------------------------------------------------------------------------


def test_rest_transport_errors_map_like_grpc(make_key, rest_settings, emulator):
    uri = make_key()
    kek = open_key(uri, rest_settings)
    dek = os.urandom(32)
    emulator.fail_next(2)
    wrapped = kek.wrap(dek, CONTEXT)
    assert emulator.calls["Encrypt"] == 3
    with pytest.raises(UnwrapError, match="INVALID_ARGUMENT"):
        kek.unwrap(wrapped, {})
    with pytest.raises(KeyNotFoundError, match="NOT_FOUND"):
        open_key(f"{RING}/missing", rest_settings).wrap(dek, {})
    emulator.set_state(wrapped.key_id.removeprefix("gcp-kms:"), "DISABLED")
    with pytest.raises(KeyDisabledError, match="FAILED_PRECONDITION"):
        kek.unwrap(wrapped, CONTEXT)
    emulator.deny(uri.removeprefix("gcp-kms:"))
    with pytest.raises(AccessDeniedError, match="PERMISSION_DENIED"):
        kek.wrap(dek, CONTEXT)


def test_rest_transport_rsa_and_rotation(make_key, rest_settings, emulator):
    uri = make_key(RSA)
    kek = open_key(uri, rest_settings)
    dek = os.urandom(32)
    assert kek.unwrap(kek.wrap(dek, {}), {}) == dek
    sym = make_key()
    emulator.add_version(sym.removeprefix("gcp-kms:"))
    assert open_key(sym, rest_settings).latest().key_id == f"{sym}/cryptoKeyVersions/2"


# -- rotation ------------------------------------------------------------------------------------


def test_latest_is_the_primary_version(make_key, settings, emulator):
    uri = make_key()
    name = uri.removeprefix("gcp-kms:")
    clock = Clock()
    old = open_key(f"{uri}/cryptoKeyVersions/1", settings, clock=clock)
    assert old.latest() is old  # already the primary: nothing to move
    emulator.add_version(name)
    assert old.latest() is old  # remembered for key_cache_ttl
    clock.now += 31
    newest = old.latest()
    assert newest.key_id == f"{uri}/cryptoKeyVersions/2"
    dek = os.urandom(32)
    wrapped = newest.wrap(dek, CONTEXT)
    assert wrapped.key_id == f"{uri}/cryptoKeyVersions/2"
    assert open_key(wrapped.key_id, settings).unwrap(wrapped, CONTEXT) == dek
    emulator.set_primary(f"{name}/cryptoKeyVersions/1")  # a rollback of the primary
    assert open_key(uri, settings).latest().key_id == f"{uri}/cryptoKeyVersions/1"


def test_latest_of_an_rsa_key_is_its_newest_enabled_version(make_key, settings, emulator):
    uri = make_key(RSA)
    emulator.add_version(uri.removeprefix("gcp-kms:"))
    kek = open_key(f"{uri}/cryptoKeyVersions/1", settings)
    newest = kek.latest()
    assert newest.key_id == f"{uri}/cryptoKeyVersions/2"
    assert newest.wrap(os.urandom(32), {}).key_id == f"{uri}/cryptoKeyVersions/2"
    assert emulator.calls["Encrypt"] == 0  # known to be RSA from GetCryptoKey: no probe


def test_strict_decryption_trusts_versions_of_a_named_key(registry, settings, make_key):
    """No allowed_keys: the configured recipient (a key, no version) vouches for the version
    its envelopes record, so they open in another engine; another key's do not."""
    from kmsenvelope import Config, Engine
    from kmsenvelope.errors import NoRecipientError

    uri, stranger = make_key(), make_key()
    config = Config(providers={"gcp-kms": settings}, recipients=(uri,))
    blob = Engine(registry=registry, config=config).encrypt(b"payload", None, CONTEXT)
    assert Engine(registry=registry, config=config).decrypt(blob, CONTEXT) == b"payload"
    other = Engine(registry=registry, config=Config(providers={"gcp-kms": settings}))
    foreign = other.encrypt(b"x", [stranger], {})
    with pytest.raises(NoRecipientError, match="not a key you named"):
        Engine(registry=registry, config=config).decrypt(foreign)


def test_recognizes_versions_of_the_key(settings):
    kek = GcpKmsKey(f"{RING}/k", settings)
    assert kek.recognizes(f"{RING}/k/cryptoKeyVersions/4")
    assert not kek.recognizes(f"{RING}/k")
    assert not kek.recognizes(f"{RING}/other/cryptoKeyVersions/4")
    assert not kek.recognizes("local:k/4")
    pinned = GcpKmsKey(f"{RING}/k/cryptoKeyVersions/2", settings)
    assert not pinned.recognizes(f"{RING}/k/cryptoKeyVersions/4")
