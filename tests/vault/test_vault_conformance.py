"""The core's provider conformance suite, against the Transit emulator (and ``vault``/``bao
server -dev`` when installed): an AEAD key binding the context as ``associated_data``, a
ChaCha20-Poly1305 key, and a derived key binding it as the key-derivation ``context``.

Transit ciphertexts carry their 12-byte nonce first, so the nonce checks run too (on a smaller
sample than the default 10,000: each wrap is an HTTP request)."""

from __future__ import annotations

from typing import Any

import pytest
from vault_backends import Backend

from kmsenvelope import WrappedKey
from kmsenvelope.conformance import ProviderConformance
from kmsenvelope_vault.kek import AEAD_KEY_TYPES, VaultTransitKEK
from kmsenvelope_vault.provider import VaultTransitProvider


class _Transit(ProviderConformance):
    key_type = "aes256-gcm96"
    derived = False
    nonce_sample_size = 400

    def wrap_nonce(self, wrapped: WrappedKey) -> bytes | None:
        assert wrapped.algorithm in AEAD_KEY_TYPES
        return wrapped.ciphertext[:12]

    def _open(self, backend: Backend, name: str) -> VaultTransitKEK:
        settings = backend.settings()
        return VaultTransitProvider()(backend.uri(name), settings)

    @pytest.fixture(autouse=True)
    def _token(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("VAULT_TOKEN", backend.root_token)

    @pytest.fixture
    def kek(self, backend: Backend) -> VaultTransitKEK:
        name = backend.create_key("conf", self.key_type, derived=self.derived)
        return self._open(backend, name)

    @pytest.fixture
    def reopen(self, backend: Backend) -> Any:
        # Every call builds a new provider: a new hvac client and session.
        return lambda uri: VaultTransitProvider()(uri, backend.settings())

    @pytest.fixture
    def unknown_key(self, backend: Backend) -> str:
        return backend.uri("missing-" + backend.create_key("x").rsplit("-", 1)[1])

    @pytest.fixture
    def other_kek(self, backend: Backend) -> VaultTransitKEK:
        return self._open(backend, backend.create_key("other", self.key_type, derived=self.derived))


class TestAes256Gcm96(_Transit):
    """The default Transit key type; the context goes to the server as associated_data."""


class TestChaCha20Poly1305(_Transit):
    key_type = "chacha20-poly1305"


class TestDerivedKey(_Transit):
    """derived=true: the server derives a key per context (HKDF), bound as ``context``."""

    derived = True
