"""The conformance suite itself catches broken providers: a fixed GCM nonce, a context that is
never bound (whatever the provider says about itself), and refusals that are not
``ProviderError``s.

Each broken KEK below is a small AES-GCM provider written for this test (the code under test is
the suite, not the KEK). The suite runs against it in a separate pytest process, and the test
checks exactly which conformance tests fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

PROVIDERS = textwrap.dedent(
    '''
    import os

    import pytest
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from kmsenvelope import AuthenticationError, KeyNotFoundError, UnwrapError, WrappedKey
    from kmsenvelope.conformance import ProviderConformance
    from kmsenvelope.format.header import encode_context

    KEYS = {"test:a": os.urandom(32), "test:b": os.urandom(32)}


    class GcmKek:
        """A correct AES-256-GCM KEK; the subclasses break one thing each."""

        def __init__(self, uri):
            if uri not in KEYS:
                raise KeyNotFoundError(f"{uri}: no such key")
            self.key_id = uri
            self._aead = AESGCM(KEYS[uri])

        def __repr__(self):
            return f"GcmKek({self.key_id!r})"

        def nonce(self):
            return os.urandom(12)

        def aad(self, context):
            return self.key_id.encode() + b"\\x00" + encode_context(context)

        def refuse(self, why):
            return UnwrapError(f"{self.key_id}: {why}")

        def wrap(self, dek, context):
            nonce = self.nonce()
            ct = nonce + self._aead.encrypt(nonce, dek, self.aad(context))
            return WrappedKey("test", self.key_id, "AES-256-GCM", ct)

        def unwrap(self, wrapped, context):
            if wrapped.key_id != self.key_id:
                raise self.refuse("another key")
            try:
                ct = wrapped.ciphertext
                return self._aead.decrypt(ct[:12], ct[12:], self.aad(context))
            except (InvalidTag, ValueError):
                raise self.refuse("did not authenticate") from None


    class FixedNonce(GcmKek):
        def nonce(self):
            return bytes(12)


    class ContextBlind(GcmKek):
        def aad(self, context):
            return self.key_id.encode()


    class ForeignErrors(GcmKek):
        def refuse(self, why):
            return AuthenticationError(why)  # a KmsEnvelopeError, but not a ProviderError


    def suite_for(kek_class, **attributes):
        class Suite(ProviderConformance):
            @pytest.fixture
            def reopen(self):
                return kek_class

            @pytest.fixture
            def kek(self):
                return kek_class("test:a")

            @pytest.fixture
            def other_kek(self):
                return kek_class("test:b")

            @pytest.fixture
            def unknown_key(self):
                return "test:missing"

        for name, value in attributes.items():
            setattr(Suite, name, value)
        return Suite


    TestCorrect = suite_for(GcmKek)
    TestFixedNonce = suite_for(FixedNonce)
    TestContextBlindWithOldFlag = suite_for(ContextBlind, binds_context=False)
    TestContextBlindDeclaredWithoutAad = suite_for(
        ContextBlind, algorithms_without_aad=frozenset({"AES-256-GCM"})
    )
    TestForeignErrors = suite_for(ForeignErrors)
    '''
)


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Conformance tests that failed, by suite class (run once, in a child pytest)."""
    folder = tmp_path_factory.mktemp("broken-providers")
    (folder / "test_broken_providers.py").write_text(PROVIDERS, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    found: dict[str, set[str]] = {}
    for cls, test in re.findall(r"^FAILED \S+::(\w+)::(\w+)", out.stdout, re.MULTILINE):
        found.setdefault(cls, set()).add(test)
    assert "passed" in out.stdout, out.stdout + out.stderr
    return found


def test_a_correct_provider_passes(failures: dict[str, set[str]]) -> None:
    assert "TestCorrect" not in failures


def test_a_fixed_gcm_nonce_is_caught(failures: dict[str, set[str]]) -> None:
    assert failures["TestFixedNonce"] == {
        "test_two_wraps_of_one_data_key_differ",
        "test_nonce_never_repeats",
    }


@pytest.mark.parametrize(
    "suite", ["TestContextBlindWithOldFlag", "TestContextBlindDeclaredWithoutAad"]
)
def test_an_unbound_context_is_caught_whatever_the_provider_says(
    failures: dict[str, set[str]], suite: str
) -> None:
    assert {
        "test_wrong_context_rejected_by_kek",
        "test_engine_hands_the_context_to_the_kek",
    } <= failures[suite]


def test_refusals_must_be_provider_errors(failures: dict[str, set[str]]) -> None:
    assert failures["TestForeignErrors"] == {
        "test_wrong_context_rejected_by_kek",
        "test_engine_hands_the_context_to_the_kek",
        "test_tampered_wrapped_key_rejected",
        "test_refuses_another_keys_wrapped_key",
    }
