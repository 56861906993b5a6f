"""The boundary between the engine and providers: a KEK and the wrapped key it produces."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "KeyEncryptionKey",
    "ProviderFactory",
    "RotatableKey",
    "ServiceRewrapKey",
    "WrappedKey",
    "scheme_of",
]

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$")


@lru_cache(maxsize=1024)  # called for every wrapped key, with a handful of distinct URIs
def scheme_of(uri: str) -> str:
    """Return the scheme of a key URI (``local`` for ``local:payments``).

    Raises ``ValueError`` if the URI has no valid scheme.
    """
    scheme, sep, rest = uri.partition(":")
    if not sep or not rest or not _SCHEME.match(scheme):
        raise ValueError(f"not a key URI (expected SCHEME:KEY, e.g. local:NAME): {uri!r}")
    return scheme


NO_PARAMS: Mapping[str, str] = MappingProxyType({})
"""The shared, empty ``WrappedKey.params`` (internal: pass ``{}`` or nothing)."""


def _frozen(params: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(params)) if params else NO_PARAMS


@dataclass(frozen=True, slots=True, init=False)
class WrappedKey:
    """A data key wrapped by one KEK: the only thing that crosses the provider boundary.

    ``key_id`` is the full, versioned URI of the KEK that produced ``ciphertext``; handed back
    to the provider's factory it reopens exactly that key version.
    """

    provider: str
    key_id: str
    algorithm: str
    ciphertext: bytes = field(repr=False)
    params: Mapping[str, str] = field(default_factory=lambda: NO_PARAMS)

    def __init__(
        self,
        provider: str,
        key_id: str,
        algorithm: str,
        ciphertext: bytes | bytearray | memoryview,
        params: Mapping[str, str] = NO_PARAMS,
    ) -> None:
        # Written out rather than generated: every wrap and every parsed stanza builds one,
        # and the usual case (three non-empty str, bytes, no params) is checked in one test.
        if not (
            type(provider) is str
            and type(key_id) is str
            and type(algorithm) is str
            and provider
            and key_id
            and algorithm
        ):
            named = (("provider", provider), ("key_id", key_id), ("algorithm", algorithm))
            for name, value in named:
                if not isinstance(value, str) or not value:
                    raise ValueError(f"WrappedKey.{name} must be a non-empty string")
        if type(ciphertext) is not bytes:
            ciphertext = bytes(ciphertext)
        if params is not NO_PARAMS:
            if params:
                for k, v in params.items():
                    if not isinstance(k, str) or not isinstance(v, str):
                        raise ValueError("WrappedKey.params must map str to str")
            params = _frozen(params)
        _SET_PROVIDER(self, provider)
        _SET_KEY_ID(self, key_id)
        _SET_ALGORITHM(self, algorithm)
        _SET_CIPHERTEXT(self, ciphertext)
        _SET_PARAMS(self, params)

    def __repr__(self) -> str:
        return (
            f"WrappedKey(provider={self.provider!r}, key_id={self.key_id!r}, "
            f"algorithm={self.algorithm!r}, ciphertext=<{len(self.ciphertext)} bytes>, "
            f"params={dict(self.params)!r})"
        )

    def __hash__(self) -> int:
        return hash((self.provider, self.key_id, self.algorithm, self.ciphertext))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WrappedKey):
            return NotImplemented
        return (
            self.provider == other.provider
            and self.key_id == other.key_id
            and self.algorithm == other.algorithm
            and self.ciphertext == other.ciphertext
            and dict(self.params) == dict(other.params)
        )


# The slots' own setters: a frozen dataclass cannot assign its fields, and these are about a
# third cheaper than ``object.__setattr__`` (a WrappedKey is built for every wrap and parse).


def _setter(name: str) -> Callable[[WrappedKey, Any], None]:
    """The ``__set__`` of the slot ``name`` (its member descriptor on the class)."""
    setter: Callable[[WrappedKey, Any], None] = getattr(WrappedKey, name).__set__
    return setter


_SET_PROVIDER = _setter("provider")
_SET_KEY_ID = _setter("key_id")
_SET_ALGORITHM = _setter("algorithm")
_SET_CIPHERTEXT = _setter("ciphertext")
_SET_PARAMS = _setter("params")
WRAPPED_KEY_SETTERS = (_SET_PROVIDER, _SET_KEY_ID, _SET_ALGORITHM, _SET_CIPHERTEXT, _SET_PARAMS)
"""Internal: the five field setters in field order, for code that builds a ``WrappedKey`` of
fields it has checked (:func:`checked_wrapped_key`, written out where it runs per message)."""
_new = object.__new__


def checked_wrapped_key(
    provider: str, key_id: str, algorithm: str, ciphertext: bytes, params: Mapping[str, str]
) -> WrappedKey:
    """A ``WrappedKey`` of fields already checked as its constructor would (internal: the
    parser builds one per stanza of a header it has seen before, without checking again)."""
    wrapped: WrappedKey = _new(WrappedKey)
    _SET_PROVIDER(wrapped, provider)
    _SET_KEY_ID(wrapped, key_id)
    _SET_ALGORITHM(wrapped, algorithm)
    _SET_CIPHERTEXT(wrapped, ciphertext)
    _SET_PARAMS(wrapped, params)
    return wrapped


@runtime_checkable
class KeyEncryptionKey(Protocol):
    """A key-encryption key: wraps and unwraps data keys, nothing more.

    ``key_id`` is a full URI with its scheme (``local:payments``). ``wrap`` must return a
    ``WrappedKey`` whose ``key_id`` names the exact key version used. ``context`` is the
    envelope's encryption context; providers that support additional authenticated data
    bind it, others may ignore it (the envelope's header MAC binds it regardless).
    """

    @property
    def key_id(self) -> str:
        """The URI this KEK was opened with."""
        ...

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Wrap ``dek`` for this key, binding ``context`` where the provider can."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Return the data key inside ``wrapped``, or raise a ``ProviderError``."""
        ...


@runtime_checkable
class RotatableKey(Protocol):
    """Optional extension of a KEK whose keys have versions (local HSM, Azure Key Vault).

    ``latest()`` returns the KEK for the key's *current* version; ``rewrap(rotate=True)`` uses
    it to move recipients to new key versions. Keys without it are left as they are.
    """

    def latest(self) -> KeyEncryptionKey:
        """This key at its current version (a versionless KEK)."""
        ...


@runtime_checkable
class ServiceRewrapKey(Protocol):
    """Optional extension of a ``RotatableKey`` whose service moves a wrapped key to the key's
    current version by itself (Vault Transit's ``rewrap``): ``rewrap(rotate=True)`` then sends
    the service the old wrapped key, never the data key.

    ``rewrap_latest`` returns the new ``WrappedKey`` (``wrapped`` itself, or one naming the same
    version, when it already is current), or None when the service cannot do it for this
    wrapped key -- rotation then wraps the data key with ``latest()`` as for any other key.
    """

    def rewrap_latest(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey | None:
        """``wrapped`` re-encrypted by the service under the key's current version, or None."""
        ...


class ProviderFactory(Protocol):
    """Opens the KEK named by ``uri``; ``settings`` is the ``[providers.SCHEME]`` config table."""

    def __call__(self, uri: str, settings: Mapping[str, Any], /) -> KeyEncryptionKey: ...
