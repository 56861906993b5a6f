"""Helpers shared by the core tests (not collected: the name has no ``test_`` prefix)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from kmsenvelope.kek import WrappedKey
from kmsenvelope.memory import InMemoryKEK


class SharedKeyProvider:
    """A test provider whose keys all wrap with one in-memory KEK; subclasses set ``scheme``
    (the name wrapped keys carry) and define ``unwrap``."""

    scheme: ClassVar[str]
    kek = InMemoryKEK(bytes(range(32)), "shared")

    def __init__(self, uri: str, settings: Mapping[str, Any]) -> None:
        self.uri = uri

    @property
    def key_id(self) -> str:
        return self.uri

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        w = self.kek.wrap(dek, context)
        return WrappedKey(self.scheme, self.uri, w.algorithm, w.ciphertext)
