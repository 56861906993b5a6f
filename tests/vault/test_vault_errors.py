"""Failures map onto the core's ProviderError tree, with one-line messages naming the key, the
operation and what to do: permission (the policy needed), missing keys and versions, retired
versions, throttling and outages after bounded retries through urllib3's Retry."""

from __future__ import annotations

import os
import socket
import time

import pytest
from transit_emulator import TransitEmulator
from vault_backends import Backend, unique

from kmsenvelope import ProviderUnavailableError, WrappedKey
from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDisabledError,
    KeyNotFoundError,
    ProviderError,
    ThrottledError,
    UnwrapError,
)
from kmsenvelope_vault.provider import VaultTransitProvider

CONTEXT = {"app": "billing"}


@pytest.fixture(autouse=True)
def _root_token(emulator: TransitEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", emulator.root_token)


def _kek(backend: Backend, name: str, **settings: object) -> object:
    return VaultTransitProvider()(backend.uri(name), backend.settings(**settings))


def test_permission_denied_names_the_policy_needed(
    emulator_backend: Backend, emulator: TransitEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = emulator_backend.create_key()
    monkeypatch.setenv("VAULT_TOKEN", emulator.token_for((f"transit/keys/{name}", "read")))
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    with pytest.raises(AccessDeniedError) as caught:
        kek.wrap(os.urandom(32), CONTEXT)
    message = str(caught.value)
    assert f'path "transit/encrypt/{name}" {{ capabilities = ["update"] }}' in message
    assert message.startswith(emulator_backend.uri(name) + ": encrypt denied")
    assert "\n" not in message
    assert caught.value.exit_code == 8


def test_unknown_key_is_never_created_by_encrypt(
    emulator_backend: Backend, emulator: TransitEmulator
) -> None:
    """Transit's encrypt creates a missing key for a token allowed to: wrap reads it first."""
    name = unique("missing")
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    with pytest.raises(KeyNotFoundError) as caught:
        kek.wrap(os.urandom(32), CONTEXT)
    assert f"no key {name!r} in mount 'transit'" in str(caught.value)
    assert ("", "transit", name) not in emulator.keys
    assert "encrypt" not in emulator.operations()


def test_deleted_key_on_unwrap(emulator_backend: Backend, emulator: TransitEmulator) -> None:
    name = emulator_backend.create_key()
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    del emulator.keys[("", "transit", name)]
    with pytest.raises(KeyNotFoundError) as caught:
        kek.unwrap(wrapped, CONTEXT)
    assert caught.value.exit_code == 9
    assert wrapped.key_id in str(caught.value)


def test_retired_version_is_key_disabled(emulator_backend: Backend) -> None:
    name = emulator_backend.create_key()
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    dek = os.urandom(32)
    old = kek.wrap(dek, CONTEXT)
    emulator_backend.rotate(name)
    emulator_backend.configure(name, min_decryption_version=2)
    with pytest.raises(KeyDisabledError) as caught:
        kek.unwrap(old, CONTEXT)
    assert "min_decryption_version" in str(caught.value)
    assert old.key_id.endswith("/1")
    new = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    fresh = new.wrap(dek, CONTEXT)
    assert fresh.key_id.endswith("/2")
    assert new.unwrap(fresh, CONTEXT) == dek


def test_version_that_does_not_exist(emulator_backend: Backend) -> None:
    name = emulator_backend.create_key()
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    forged = WrappedKey(
        wrapped.provider,
        emulator_backend.uri(name, version=7),
        wrapped.algorithm,
        wrapped.ciphertext,
        wrapped.params,
    )
    with pytest.raises(KeyNotFoundError):
        kek.unwrap(forged, CONTEXT)


def test_tampered_binding_parameter_is_rejected(emulator_backend: Backend) -> None:
    name = emulator_backend.create_key("derived", derived=True)
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    assert dict(wrapped.params) == {"context": "derived/v1"}
    for params in ({"context": "associated_data/v1"}, {"context": "none"}, {}):
        bad = WrappedKey(
            wrapped.provider, wrapped.key_id, wrapped.algorithm, wrapped.ciphertext, params
        )
        with pytest.raises(UnwrapError):
            kek.unwrap(bad, CONTEXT)


def test_key_types_that_cannot_wrap(emulator_backend: Backend) -> None:
    for key_type in ("ed25519", "rsa-2048"):
        name = emulator_backend.create_key("typed", key_type)
        kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
        with pytest.raises(ProviderError) as caught:
            kek.wrap(os.urandom(32), CONTEXT)
        assert f"a {key_type} Transit key cannot wrap data keys" in str(caught.value)


def test_throttling_is_retried_with_retry_after_capped(
    emulator_backend: Backend, emulator: TransitEmulator
) -> None:
    name = emulator_backend.create_key()
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    emulator.fail("encrypt", 429, times=2, retry_after=30)  # capped at retry_backoff_max
    started = time.monotonic()
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    assert time.monotonic() - started < 5
    assert wrapped.key_id.endswith("/1")
    assert emulator.operations().count("encrypt") == 3


def test_throttled_after_bounded_retries(
    emulator_backend: Backend, emulator: TransitEmulator
) -> None:
    name = emulator_backend.create_key()
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    emulator.clear_calls()
    emulator.fail("decrypt", 429, times=10)
    with pytest.raises(ThrottledError) as caught:
        kek.unwrap(wrapped, CONTEXT)
    assert "rate limited after bounded retries" in str(caught.value)
    assert emulator.operations().count("decrypt") == 3  # retry_total = 2
    emulator.faults.clear()
    emulator.fail("decrypt", 503, times=10)
    with pytest.raises(ProviderUnavailableError) as sealed:
        kek.unwrap(wrapped, CONTEXT)
    assert "is sealed" in str(sealed.value)
    assert sealed.value.exit_code == 7


def test_unreachable_server(emulator: TransitEmulator) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"vault-transit:http://127.0.0.1:{port}/transit/keys/k"
    kek = VaultTransitProvider()(uri, {"retry_total": 1, "retry_backoff_factor": 0.01})
    with pytest.raises(ProviderUnavailableError) as caught:
        kek.wrap(os.urandom(32), CONTEXT)
    assert str(caught.value) == f"{uri}: read: http://127.0.0.1:{port} is unreachable"
