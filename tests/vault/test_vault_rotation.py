"""Rotation: ``latest()`` (RotatableKey) and ``rewrap_latest`` (Transit's own rewrap endpoint,
which the core's ServiceRewrapKey hook calls): a derived key's stanza moves to the newest version
inside the server, the data key neither sent nor returned; AEAD stanzas (associated_data, which
Transit's rewrap cannot carry) are left to a fresh encrypt."""

from __future__ import annotations

import os

import pytest
from transit_emulator import TransitEmulator
from vault_backends import Backend

from kmsenvelope import RotatableKey
from kmsenvelope.errors import UnwrapError
from kmsenvelope_vault.provider import VaultTransitProvider

CONTEXT = {"tenant": "t-7"}


@pytest.fixture(autouse=True)
def _root_token(emulator: TransitEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", emulator.root_token)


def test_derived_stanza_moves_through_the_rewrap_endpoint(
    emulator_backend: Backend, emulator: TransitEmulator
) -> None:
    name = emulator_backend.create_key("rw", derived=True)
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    dek = os.urandom(32)
    old = kek.wrap(dek, CONTEXT)
    assert old.key_id == emulator_backend.uri(name, version=1)
    emulator_backend.rotate(name)
    emulator.clear_calls()

    versioned = VaultTransitProvider()(old.key_id, emulator_backend.settings())
    assert isinstance(versioned, RotatableKey)
    assert versioned.latest().key_id == emulator_backend.uri(name)
    moved = versioned.rewrap_latest(old, CONTEXT)
    assert moved is not None
    assert moved.key_id == emulator_backend.uri(name, version=2)
    assert moved.params == old.params
    assert emulator.operations() == ["read", "rewrap"]
    (call,) = [c for c in emulator.calls if c.operation == "rewrap"]
    assert call.fields == {"ciphertext", "context"}  # never a plaintext

    assert kek.unwrap(moved, CONTEXT) == dek
    emulator.clear_calls()
    assert versioned.rewrap_latest(moved, CONTEXT) is moved  # already newest: no call at all
    assert emulator.operations() == []


def test_rewrap_under_another_context_is_refused(emulator_backend: Backend) -> None:
    name = emulator_backend.create_key("rw", derived=True)
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    old = kek.wrap(os.urandom(32), CONTEXT)
    emulator_backend.rotate(name)
    fresh = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    with pytest.raises(UnwrapError):
        fresh.rewrap_latest(old, {"tenant": "t-8"})


def test_aead_stanza_is_left_to_encrypt(
    emulator_backend: Backend, emulator: TransitEmulator
) -> None:
    name = emulator_backend.create_key("aead")
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    dek = os.urandom(32)
    old = kek.wrap(dek, CONTEXT)
    emulator_backend.rotate(name)
    emulator.clear_calls()
    assert kek.rewrap_latest(old, CONTEXT) is None
    assert emulator.operations() == []
    newest = VaultTransitProvider()(old.key_id, emulator_backend.settings()).latest()
    moved = newest.wrap(dek, CONTEXT)
    assert moved.key_id == emulator_backend.uri(name, version=2)
    assert kek.unwrap(moved, CONTEXT) == dek


def test_transit_rewrap_loses_associated_data(
    emulator_backend: Backend, emulator: TransitEmulator
) -> None:
    """Why AEAD stanzas are not sent to rewrap: like Vault and OpenBao, the endpoint takes no
    associated_data, so the old ciphertext does not authenticate there."""
    name = emulator_backend.create_key("aead")
    kek = VaultTransitProvider()(emulator_backend.uri(name), emulator_backend.settings())
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    ciphertext = "vault:v1:" + __import__("base64").b64encode(wrapped.ciphertext).decode()
    answer = emulator_backend.admin.adapter.post(
        f"/v1/transit/rewrap/{name}",
        json={"ciphertext": ciphertext},
        raise_exception=False,
    )
    assert answer.status_code == 400
    assert answer.json() == {"errors": ["cipher: message authentication failed"]}
