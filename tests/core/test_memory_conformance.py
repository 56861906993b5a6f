"""``InMemoryKEK`` (the ``memory:`` scheme) passes the provider conformance suite.

In-memory keys have no service to reopen them from, so ``reopen`` here is a small table of the
test's own keys: a fresh ``InMemoryKEK`` built from the same key bytes, and ``KeyNotFoundError``
for a name the table does not hold (what a provider factory would raise).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from kmsenvelope import KeyEncryptionKey
from kmsenvelope.conformance import ProviderConformance
from kmsenvelope.errors import KeyNotFoundError
from kmsenvelope.memory import InMemoryKEK

Reopen = Callable[[str], KeyEncryptionKey]


class TestInMemoryKekConformance(ProviderConformance):
    @pytest.fixture
    def keys(self) -> dict[str, bytes]:
        """The key bytes of every in-memory key this test knows, by URI."""
        return {"memory:conformance": os.urandom(32), "memory:other": os.urandom(32)}

    @pytest.fixture
    def reopen(self, keys: dict[str, bytes]) -> Reopen:
        def open_key(uri: str) -> KeyEncryptionKey:
            if uri not in keys:
                raise KeyNotFoundError(f"{uri}: no such in-memory key")
            return InMemoryKEK(keys[uri], uri.removeprefix("memory:"))

        return open_key

    @pytest.fixture
    def kek(self, reopen: Reopen) -> KeyEncryptionKey:
        return reopen("memory:conformance")

    @pytest.fixture
    def unknown_key(self) -> str:
        return "memory:no-such-key"

    @pytest.fixture
    def other_kek(self, reopen: Reopen) -> KeyEncryptionKey:
        return reopen("memory:other")
