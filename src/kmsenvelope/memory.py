"""An in-process AES-256-GCM KEK: for tests, benchmarks and keys that exist only in code.

It binds the encryption context as AAD, exactly like the local HSM's AES keys, but keeps the
key in memory only; decrypt with ``keys=[the_same_kek]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import UnwrapError
from .format.header import encode_context
from .kek import NO_PARAMS, WRAPPED_KEY_SETTERS, WrappedKey

_new = object.__new__
_set_provider, _set_key_id, _set_algorithm, _set_ciphertext, _set_params = WRAPPED_KEY_SETTERS

__all__ = ["InMemoryKEK"]

ALGORITHM = "AES-256-GCM"


class InMemoryKEK:
    """A KEK held in process memory under the ``memory:`` scheme."""

    def __init__(self, key: bytes, name: str = "test") -> None:
        if len(key) != 32:
            raise ValueError("InMemoryKEK needs a 32-byte AES key")
        self._aead = AESGCM(key)
        self._key_id = f"memory:{name}"
        self._aad_prefix = self._key_id.encode() + b"\x00"
        self._aad_empty = self._aad_prefix + encode_context({})  # the usual, empty context
        WrappedKey("memory", self._key_id, ALGORITHM, b"")  # the fields pass its checks once

    @classmethod
    def generate(cls, name: str = "test") -> InMemoryKEK:
        """A KEK with a fresh random key."""
        return cls(AESGCM.generate_key(256), name)

    @property
    def key_id(self) -> str:
        return self._key_id

    def __repr__(self) -> str:
        return f"InMemoryKEK({self._key_id!r})"

    def _aad(self, context: Mapping[str, str]) -> bytes:
        return self._aad_prefix + encode_context(context) if context else self._aad_empty

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, dek, self._aad_empty if not context else self._aad(context))
        # checked_wrapped_key written out (its text fields passed the checks in __init__).
        wrapped: WrappedKey = _new(WrappedKey)
        _set_provider(wrapped, "memory")
        _set_key_id(wrapped, self._key_id)
        _set_algorithm(wrapped, ALGORITHM)
        _set_ciphertext(wrapped, nonce + ct)
        _set_params(wrapped, NO_PARAMS)
        return wrapped

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if wrapped.key_id != self._key_id or wrapped.algorithm != ALGORITHM:
            raise UnwrapError(f"{wrapped.key_id}: not wrapped by {self._key_id}")
        blob = wrapped.ciphertext
        aad = self._aad_empty if not context else self._aad(context)
        try:
            return self._aead.decrypt(blob[:12], blob[12:], aad)
        except (InvalidTag, ValueError):
            raise UnwrapError(
                f"{self._key_id}: wrapped key did not authenticate (tampered, other key "
                "or other context)"
            ) from None
