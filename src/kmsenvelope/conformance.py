"""The provider conformance suite every provider, first-party or third-party, must pass.

Subclass :class:`ProviderConformance` in your own tests and supply three fixtures::

    import pytest
    from kmsenvelope.conformance import ProviderConformance

    class TestMyProvider(ProviderConformance):
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

What the suite expects of an algorithm is never a flag the provider sets on itself: it reads
the ``algorithm`` each wrap records and looks it up in the tables of this module.

* **Context binding.** Every algorithm binds the encryption context unless its name is in
  :data:`ALGORITHMS_WITHOUT_AAD` (RSA-OAEP, RSA PKCS#1 v1.5, AES key wrap): unwrapping under
  another context must then raise a :class:`~kmsenvelope.errors.ProviderError`. An algorithm
  without AAD may only return the same data key or refuse with a ``ProviderError``; the
  envelope's header MAC binds the context for it (checked for every provider). A plugin whose
  own algorithm has no AAD names it in the class attribute ``algorithms_without_aad``; a name
  in :data:`AEAD_ALGORITHMS` (AES-GCM, AWS KMS ``SYMMETRIC_DEFAULT``) can never be listed.
* **Randomness.** Two wraps of one data key must differ, unless the algorithm is in
  :data:`DETERMINISTIC_ALGORITHMS` (AES key wrap, RFC 3394/5649) or the class attribute
  ``deterministic_algorithms``, in which case they must be equal (so the claim is checked).
* **Nonces.** Where the nonce can be seen in the wrapped key, ``nonce_sample_size`` (10,000)
  wraps of one data key never repeat it. :meth:`ProviderConformance.wrap_nonce` finds it from
  :data:`NONCE_LAYOUTS` (AES-GCM: the ciphertext starts with its 12-byte nonce); override it
  when your wrapped key carries its nonce elsewhere. Where no nonce is visible (a KMS
  ciphertext blob is opaque; RSA-OAEP has none) that one test is skipped, saying why.
* **The engine hands the context over.** An envelope encrypted through the engine with a
  context must carry a recipient that a fresh KEK unwraps under that context and, for an
  algorithm that binds it, refuses under an empty or another context.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import pytest

from .config import Config
from .engine import Engine
from .errors import AuthenticationError, DecryptionError, KeyNotFoundError, ProviderError
from .format.header import MAGIC
from .kek import KeyEncryptionKey, WrappedKey, scheme_of
from .plugins import ProviderRegistry

__all__ = [
    "AEAD_ALGORITHMS",
    "ALGORITHMS_WITHOUT_AAD",
    "DETERMINISTIC_ALGORITHMS",
    "NONCE_LAYOUTS",
    "ProviderConformance",
]

Reopen = Callable[[str], KeyEncryptionKey]
CONTEXT = {"purpose": "conformance", "tenant": "t-1"}
OTHER_CONTEXT = {"purpose": "conformance", "tenant": "t-2"}

AEAD_ALGORITHMS: tuple[str, ...] = (
    r"AES-(128|192|256)-GCM",
    r"A(128|192|256)GCM",
    "SYMMETRIC_DEFAULT",
)
"""Algorithm names (regular expressions, full match) that always bind the context as AAD."""

ALGORITHMS_WITHOUT_AAD: tuple[str, ...] = (
    r"RSA-OAEP(-\w+)?",  # local, PKCS#11 (RSA-OAEP-SHA256 ...), Azure (RSA-OAEP, RSA-OAEP-256)
    r"RSAES_OAEP_SHA_(1|256)",  # AWS KMS
    "RSA1_5",
    r"AES-KWP?",  # RFC 3394 / RFC 5649
    r"A(128|192|256)KW",
    r"CKM_AES_KEY_WRAP(_PAD|_KWP)?",
)
"""Algorithm names (regular expressions) with no associated data: the KEK cannot bind a context."""

DETERMINISTIC_ALGORITHMS: tuple[str, ...] = (
    r"AES-KWP?",
    r"A(128|192|256)KW",
    r"CKM_AES_KEY_WRAP(_PAD|_KWP)?",
)
"""Algorithm names (regular expressions) whose wraps of one data key are always identical."""

NONCE_LAYOUTS: Mapping[str, tuple[int, int]] = {
    r"AES-(128|192|256)-GCM": (0, 12),
    r"A(128|192|256)GCM": (0, 12),  # JOSE names (Azure Managed HSM): iv || ciphertext || tag
}
"""Where the nonce sits in ``WrappedKey.ciphertext``: algorithm pattern -> (offset, length)."""


def _matches(patterns: tuple[str, ...] | frozenset[str], algorithm: str) -> bool:
    return any(re.fullmatch(p, algorithm) for p in patterns)


def _engine(kek: KeyEncryptionKey) -> Engine:
    return Engine(registry=ProviderRegistry(), config=Config(), keys=[kek])


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


class _Recording:
    """A KEK that hands every call to the real one and records the data keys and contexts it
    was given: it shows what the engine passes across the provider boundary."""

    def __init__(self, kek: KeyEncryptionKey) -> None:
        self._kek = kek
        self.wrapped: list[tuple[bytes, dict[str, str]]] = []
        self.unwrap_contexts: list[dict[str, str]] = []

    @property
    def key_id(self) -> str:
        return self._kek.key_id

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        self.wrapped.append((bytes(dek), dict(context)))
        return self._kek.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        self.unwrap_contexts.append(dict(context))
        return self._kek.unwrap(wrapped, context)


class ProviderConformance:
    """Behaviour the engine relies on from every ``KeyEncryptionKey``."""

    algorithms_without_aad: frozenset[str] = frozenset()
    """Your own algorithm names (regular expressions) that cannot carry associated data."""

    deterministic_algorithms: frozenset[str] = frozenset()
    """Your own algorithm names (regular expressions) whose wraps are deterministic."""

    nonce_sample_size: int = 10_000
    """How many wraps ``test_nonce_never_repeats`` makes."""

    # -- what the suite expects of an algorithm ------------------------------------------------

    def must_bind_context(self, algorithm: str) -> bool:
        """Whether ``algorithm`` must bind the context (decided by name, see the module doc)."""
        if _matches(AEAD_ALGORITHMS, algorithm):
            if _matches(self.algorithms_without_aad, algorithm):
                pytest.fail(f"{algorithm} is an AEAD algorithm: it cannot be declared without AAD")
            return True
        return not (
            _matches(ALGORITHMS_WITHOUT_AAD, algorithm)
            or _matches(self.algorithms_without_aad, algorithm)
        )

    def is_deterministic(self, algorithm: str) -> bool:
        """Whether two wraps of one data key with ``algorithm`` are meant to be identical."""
        return _matches(DETERMINISTIC_ALGORITHMS, algorithm) or _matches(
            self.deterministic_algorithms, algorithm
        )

    def wrap_nonce(self, wrapped: WrappedKey) -> bytes | None:
        """The nonce of ``wrapped`` where it can be seen (see ``NONCE_LAYOUTS``), else None."""
        for pattern, (offset, length) in NONCE_LAYOUTS.items():
            if re.fullmatch(pattern, wrapped.algorithm):
                return wrapped.ciphertext[offset : offset + length]
        return None

    def check_other_context(
        self,
        kek: KeyEncryptionKey,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        dek: bytes,
    ) -> None:
        """Unwrapping under a context the key was not wrapped with: a ``ProviderError`` if the
        algorithm binds it; otherwise the same data key, or a ``ProviderError``."""
        if self.must_bind_context(wrapped.algorithm):
            with pytest.raises(ProviderError):
                kek.unwrap(wrapped, context)
            return
        try:
            got = kek.unwrap(wrapped, context)
        except ProviderError:
            return
        assert got == dek

    # -- the tests -------------------------------------------------------------------------------

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
        """Unwrapping under another, or no, context fails with a ``ProviderError`` wherever
        the algorithm binds the context (decided from the algorithm's name, not a flag)."""
        dek = os.urandom(32)
        wrapped = kek.wrap(dek, CONTEXT)
        for other in (OTHER_CONTEXT, {}):
            self.check_other_context(kek, wrapped, other, dek)
        bare = kek.wrap(dek, {})
        self.check_other_context(kek, bare, CONTEXT, dek)

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

    def test_engine_hands_the_context_to_the_kek(
        self, kek: KeyEncryptionKey, reopen: Reopen
    ) -> None:
        """The context given to the engine is the one the provider wraps under: a fresh KEK
        unwraps the envelope's recipient under it, and refuses it under another context."""
        spy = _Recording(kek)
        blob = _engine(spy).encrypt(b"context payload", [spy], CONTEXT)
        assert spy.wrapped, "the engine never called wrap"
        assert [context for _, context in spy.wrapped] == [CONTEXT]
        assert _engine(spy).decrypt(blob, CONTEXT) == b"context payload"
        assert spy.unwrap_contexts, "the engine never called unwrap"
        assert all(context == CONTEXT for context in spy.unwrap_contexts)
        dek = spy.wrapped[0][0]
        (stanza,) = _engine(kek).inspect(blob).recipients
        fresh = reopen(stanza.key_id)
        assert fresh.unwrap(stanza, CONTEXT) == dek
        for other in ({}, OTHER_CONTEXT):
            self.check_other_context(reopen(stanza.key_id), stanza, other, dek)

    def test_two_wraps_of_one_data_key_differ(self, kek: KeyEncryptionKey) -> None:
        """A randomized algorithm never wraps one data key the same way twice."""
        dek = os.urandom(32)
        first, second = kek.wrap(dek, CONTEXT), kek.wrap(dek, CONTEXT)
        if self.is_deterministic(first.algorithm):
            assert first.ciphertext == second.ciphertext, (
                f"{first.algorithm} is listed as deterministic but two wraps differ"
            )
        else:
            assert first.ciphertext != second.ciphertext, (
                f"{first.algorithm}: two wraps of one data key are identical (fixed nonce?)"
            )
        nonce = self.wrap_nonce(first)
        if nonce is not None:
            assert nonce != self.wrap_nonce(second)

    def test_nonce_never_repeats(self, kek: KeyEncryptionKey) -> None:
        """``nonce_sample_size`` wraps of one data key, under one context, never repeat the
        nonce where it can be seen (``wrap_nonce``)."""
        dek = os.urandom(32)
        probe = kek.wrap(dek, CONTEXT)
        if self.wrap_nonce(probe) is None:
            pytest.skip(f"{probe.algorithm}: no nonce is visible in the wrapped key")
        seen: set[bytes] = set()
        for count in range(self.nonce_sample_size):
            nonce = self.wrap_nonce(kek.wrap(dek, CONTEXT))
            assert nonce is not None
            assert nonce not in seen, f"nonce {nonce.hex()} repeated after {count} wraps"
            seen.add(nonce)

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
            with pytest.raises(ProviderError):
                kek.unwrap(bad, CONTEXT)
        short = WrappedKey(
            wrapped.provider,
            wrapped.key_id,
            wrapped.algorithm,
            ct[: len(ct) // 2],
            wrapped.params,
        )
        with pytest.raises(ProviderError):
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
        with pytest.raises(ProviderError):
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
