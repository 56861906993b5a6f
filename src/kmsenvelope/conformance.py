"""The provider conformance suite every provider, first-party or third-party, must pass.

Subclass :class:`ProviderConformance` in your own tests and supply three fixtures::

    import pytest
    from kmsenvelope.conformance import ProviderConformance

    class TestMyProvider(ProviderConformance):
        binds_context = True            # False if the algorithm has no AAD (RSA-OAEP)

        @pytest.fixture
        def kek(self):                  # a KEK that exists and can wrap
            return my_factory("mykms:key-1", {})

        @pytest.fixture
        def reopen(self):               # a FRESH instance (new client) for a key URI
            return lambda uri: my_factory(uri, {})

        @pytest.fixture
        def unknown_key(self):          # the URI of a key that does not exist
            return "mykms:no-such-key"

        @pytest.fixture
        def other_kek(self):            # optional: another key of the same provider
            return my_factory("mykms:key-2", {})

pytest collects the ``test_*`` methods below. They need ``pytest`` (a test dependency, not a
dependency of kmsenvelope itself).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from .config import Config
from .engine import Engine
from .errors import AuthenticationError, DecryptionError, KeyNotFoundError, KmsEnvelopeError
from .header import MAGIC
from .kek import KeyEncryptionKey, WrappedKey, scheme_of
from .plugins import ProviderRegistry

__all__ = ["ProviderConformance"]

Reopen = Callable[[str], KeyEncryptionKey]
CONTEXT = {"purpose": "conformance", "tenant": "t-1"}


def _engine(kek: KeyEncryptionKey) -> Engine:
    return Engine(registry=ProviderRegistry(), config=Config(), keys=[kek])


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


class ProviderConformance:
    """Behaviour the engine relies on from every ``KeyEncryptionKey``."""

    binds_context: bool = True

    def test_key_id_is_a_uri(self, kek: KeyEncryptionKey) -> None:
        assert isinstance(kek, KeyEncryptionKey)
        scheme_of(kek.key_id)  # raises if the URI has no scheme

    def test_round_trip(self, kek: KeyEncryptionKey) -> None:
        dek = os.urandom(32)
        wrapped = kek.wrap(dek, CONTEXT)
        assert isinstance(wrapped, WrappedKey)
        assert wrapped.ciphertext != dek
        assert dek not in wrapped.ciphertext
        assert kek.unwrap(wrapped, CONTEXT) == dek

    def test_empty_context_round_trip(self, kek: KeyEncryptionKey) -> None:
        dek = os.urandom(32)
        assert kek.unwrap(kek.wrap(dek, {}), {}) == dek

    def test_version_recorded(self, kek: KeyEncryptionKey, reopen: Reopen) -> None:
        dek = os.urandom(32)
        wrapped = kek.wrap(dek, CONTEXT)
        assert wrapped.provider == scheme_of(kek.key_id)
        assert scheme_of(wrapped.key_id) == wrapped.provider
        # The recorded key id reopens exactly the key version that wrapped, in a new instance.
        fresh = reopen(wrapped.key_id)
        assert fresh.unwrap(wrapped, CONTEXT) == dek

    def test_fresh_instance_from_original_uri_unwraps(
        self, kek: KeyEncryptionKey, reopen: Reopen
    ) -> None:
        dek = os.urandom(32)
        wrapped = kek.wrap(dek, CONTEXT)
        assert reopen(kek.key_id).unwrap(wrapped, CONTEXT) == dek

    def test_wrong_context_rejected_by_kek(self, kek: KeyEncryptionKey) -> None:
        if not self.binds_context:
            pytest.skip("this KEK's algorithm has no AAD; the header MAC binds the context")
        wrapped = kek.wrap(os.urandom(32), CONTEXT)
        with pytest.raises(KmsEnvelopeError):
            kek.unwrap(wrapped, {**CONTEXT, "tenant": "t-2"})

    def test_wrong_context_rejected_by_envelope(self, kek: KeyEncryptionKey) -> None:
        engine = _engine(kek)
        blob = engine.encrypt(b"conformance payload", [kek], CONTEXT)
        with pytest.raises(AuthenticationError):
            engine.decrypt(blob, {"tenant": "t-2"})
        # Rewrite the context inside the header itself: the envelope must not open.
        tampered = blob.replace(b"t-1", b"t-2", 1)
        assert tampered != blob
        with pytest.raises(DecryptionError):
            engine.decrypt(tampered)

    def test_tampered_wrapped_key_rejected(self, kek: KeyEncryptionKey) -> None:
        dek = os.urandom(32)
        wrapped = kek.wrap(dek, CONTEXT)
        ct = wrapped.ciphertext
        for index in sorted({0, len(ct) // 2, len(ct) - 1}):
            bad = WrappedKey(
                wrapped.provider,
                wrapped.key_id,
                wrapped.algorithm,
                _flip(ct, index),
                wrapped.params,
            )
            with pytest.raises(KmsEnvelopeError):
                kek.unwrap(bad, CONTEXT)
        short = WrappedKey(
            wrapped.provider,
            wrapped.key_id,
            wrapped.algorithm,
            ct[: len(ct) // 2],
            wrapped.params,
        )
        with pytest.raises(KmsEnvelopeError):
            kek.unwrap(short, CONTEXT)

    def test_unknown_key(self, reopen: Reopen, unknown_key: str) -> None:
        with pytest.raises(KeyNotFoundError):
            reopen(unknown_key).wrap(os.urandom(32), {})

    def test_no_key_material_in_repr(self, kek: KeyEncryptionKey) -> None:
        dek = os.urandom(32)
        wrapped = kek.wrap(dek, CONTEXT)
        for text in (repr(wrapped), str(wrapped), repr(kek), str(kek)):
            assert dek.hex() not in text
            assert repr(dek) not in text
            assert wrapped.ciphertext.hex() not in text

    def test_refuses_another_keys_wrapped_key(
        self, kek: KeyEncryptionKey, request: pytest.FixtureRequest
    ) -> None:
        """Optional fixture ``other_kek``: a second key of the same provider."""
        try:
            other: KeyEncryptionKey = request.getfixturevalue("other_kek")
        except pytest.FixtureLookupError:
            pytest.skip("define an 'other_kek' fixture to check cross-key refusal")
        wrapped = other.wrap(os.urandom(32), CONTEXT)
        with pytest.raises(KmsEnvelopeError):
            kek.unwrap(wrapped, CONTEXT)

    def test_concurrent_use_from_threads(self, kek: KeyEncryptionKey) -> None:
        """One KEK instance shared by several threads (the engine does this)."""

        def work(_: int) -> bool:
            for _ in range(3):
                dek = os.urandom(32)
                if kek.unwrap(kek.wrap(dek, CONTEXT), CONTEXT) != dek:
                    return False
            return True

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert all(pool.map(work, range(4)))

    def test_envelope_round_trip(self, kek: KeyEncryptionKey, reopen: Reopen) -> None:
        blob = _engine(kek).encrypt(b"x" * 1000, [kek], CONTEXT, chunk_size=256)
        assert blob.startswith(MAGIC)
        info = _engine(kek).inspect(blob)
        assert info.recipients[0].provider == scheme_of(kek.key_id)
        fresh = reopen(info.recipients[0].key_id)
        assert _engine(fresh).decrypt(blob, CONTEXT) == b"x" * 1000
