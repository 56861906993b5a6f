"""The Vault / OpenBao Transit key-encryption key.

* **Wrap** is Transit ``encrypt`` of the data key; **unwrap** is ``decrypt``. The data key is
  sent to the server and comes back from it, never anything else: Transit keys cannot be read.
* **Context.** The envelope's encryption context, in the core's canonical encoding behind a
  fixed label (:func:`context_bytes`), is bound by the server: as ``associated_data`` for the
  AEAD key types (``aes256-gcm96``, ``aes128-gcm96``, ``chacha20-poly1305``), or as ``context``
  for keys created with ``derived=true`` (the server derives a key per context). Under another
  context the server refuses to decrypt. The stanza's ``params["context"]`` says which of the
  two was used, so unwrapping needs no key read.
* **Versions.** The stanza records ``…/keys/NAME/N``, ``N`` taken from the ``vault:vN:``
  prefix of the ciphertext; the stanza's ciphertext is the bytes after that prefix.
  ``wrap`` reads the key (``GET MOUNT/keys/NAME``, cached for ``key_cache_ttl`` seconds) to learn
  its type and whether it is derived -- and so that a missing key is reported as missing:
  Transit's ``encrypt`` would otherwise create it, for a token allowed to.
* **Rotation.** :meth:`VaultTransitKEK.latest` is the versionless key (``RotatableKey``).
  :meth:`VaultTransitKEK.rewrap_latest` moves a stanza of a derived key to the newest version
  through Transit's own ``rewrap`` endpoint: the server decrypts and re-encrypts, the data key
  is neither sent nor returned. Transit's ``rewrap`` takes no ``associated_data`` (in Vault and
  OpenBao alike), so stanzas bound that way cannot be re-wrapped by the server: for them
  ``rewrap_latest`` answers None and rotation wraps the data key again with ``encrypt``.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kmsenvelope import ConfigError, ProviderError, WrappedKey
from kmsenvelope.errors import KeyDisabledError, KeyNotFoundError, UnwrapError
from kmsenvelope.format.header import encode_context

from .client import VaultSession
from .errors import Operation
from .settings import VaultSettings
from .uri import SCHEME, KeyUri, parse_key_uri

__all__ = [
    "AEAD_KEY_TYPES",
    "BIND_ASSOCIATED_DATA",
    "BIND_DERIVED_CONTEXT",
    "VaultTransitKEK",
    "context_bytes",
]

AEAD_KEY_TYPES = frozenset({"aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"})
"""Transit key types that can wrap data keys: all take associated data, all use 96-bit nonces."""
BIND_ASSOCIATED_DATA = "associated_data/v1"
"""``params["context"]``: the context went to the server as ``associated_data``."""
BIND_DERIVED_CONTEXT = "derived/v1"
"""``params["context"]``: the context went to the server as a derived key's ``context``."""
_LABEL = b"kmsenvelope-vault-transit/v1\x00"
_CIPHERTEXT = re.compile(r"^vault:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})$")


def context_bytes(context: Mapping[str, str]) -> bytes:
    """What the server binds: a fixed label, then the canonical context (format spec 5.4).

    Never empty, so even an envelope without context has a key-derivation ``context``.
    """
    return _LABEL + encode_context(context)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class _KeyInfo:
    """What ``GET MOUNT/keys/NAME`` said (no key material: Transit never returns it)."""

    key_type: str
    derived: bool
    convergent: bool
    latest_version: int
    min_encryption_version: int
    supports_encryption: bool
    fetched_at: float


class VaultTransitKEK:
    """A Transit key, as a kmsenvelope ``KeyEncryptionKey`` (and ``RotatableKey``)."""

    def __init__(
        self,
        key: KeyUri,
        session: VaultSession,
        settings: VaultSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = key
        self._session = session
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._info: _KeyInfo | None = None

    @property
    def key_id(self) -> str:
        """The canonical URI this KEK was opened with (versionless or versioned)."""
        return self._key.uri

    def __repr__(self) -> str:
        return f"VaultTransitKEK({self._key.uri!r})"

    def latest(self) -> VaultTransitKEK:
        """This key at its newest version (versionless; resolved by the server at each wrap)."""
        if self._key.version is None:
            return self
        return VaultTransitKEK(
            self._key.with_version(None), self._session, self._settings, clock=self._clock
        )

    # -- server calls -----------------------------------------------------------------------

    def _post(
        self, operation: Operation, payload: Mapping[str, Any], key: KeyUri | None = None
    ) -> dict[str, Any]:
        """POST ``payload`` to ``MOUNT/OPERATION/NAME``; the answer's ``data``.

        ``key`` (default: this key) is the URI errors name, e.g. the version being decrypted.
        """
        key = key or self._key
        path = f"/v1/{key.mount}/{operation}/{key.name}"
        result = self._session.call(
            key, operation, lambda client: client.adapter.post(path, json=dict(payload))
        )
        return self._data(result, operation)

    def _data(self, result: Any, operation: Operation) -> dict[str, Any]:
        if not isinstance(result, dict):
            status = getattr(result, "status_code", None)
            if status in (301, 302, 303, 307, 308):
                raise ProviderError(
                    f"{self._key.uri}: {operation}: the server answered with a redirect, which is "
                    "not followed (it would carry the token elsewhere): name the active node or "
                    "the load balancer in the key URI"
                )
            raise ProviderError(
                f"{self._key.uri}: {operation}: unexpected answer (HTTP {status or '?'})"
            )
        data = result.get("data")
        if not isinstance(data, dict):
            raise ProviderError(f"{self._key.uri}: {operation} returned no 'data'")
        return data

    def _read(self) -> _KeyInfo:
        key = self._key
        path = f"/v1/{key.mount}/keys/{key.name}"
        result = self._session.call(key, "read", lambda client: client.adapter.get(path))
        data = self._data(result, "read")
        try:
            return _KeyInfo(
                key_type=str(data["type"]),
                derived=bool(data.get("derived", False)),
                convergent=bool(data.get("convergent_encryption", False)),
                latest_version=int(data["latest_version"]),
                min_encryption_version=int(data.get("min_encryption_version") or 0),
                supports_encryption=bool(data.get("supports_encryption", True)),
                fetched_at=self._clock(),
            )
        except (KeyError, TypeError, ValueError):
            raise ProviderError(f"{key.uri}: read returned a malformed key description") from None

    def _current(self, *, refresh: bool = False) -> tuple[_KeyInfo, bool]:
        """The key's description, and whether it came from the cache."""
        with self._lock:
            info = self._info
        ttl = self._settings.key_cache_ttl
        if not refresh and info is not None and self._clock() - info.fetched_at < ttl:
            return info, True
        info = self._read()
        with self._lock:
            self._info = info
        return info, False

    def _stanza(
        self, data: Mapping[str, Any], operation: Operation, binding: str, kind: str
    ) -> WrappedKey:
        """The ``WrappedKey`` for a ``vault:vN:…`` ciphertext the server returned."""
        match = _CIPHERTEXT.match(str(data.get("ciphertext", "")))
        if match is None:
            raise ProviderError(f"{self._key.uri}: {operation} returned a malformed ciphertext")
        version = int(match.group(1))
        raw = base64.b64decode(match.group(2), validate=True)
        target = self._key.with_version(version)
        return WrappedKey(SCHEME, target.uri, kind, raw, {"context": binding})

    # -- KeyEncryptionKey -------------------------------------------------------------------

    def _check_usable(self, info: _KeyInfo) -> None:
        uri = self._key.uri
        if info.key_type not in AEAD_KEY_TYPES:
            raise ProviderError(
                f"{uri}: a {info.key_type} Transit key cannot wrap data keys here: use "
                f"{', '.join(sorted(AEAD_KEY_TYPES))} (they bind the encryption context)"
            )
        if info.convergent:
            raise ProviderError(
                f"{uri}: convergent-encryption keys wrap one data key the same way every time; "
                "use a key created without convergent_encryption"
            )
        if not info.supports_encryption:
            raise ProviderError(f"{uri}: this key does not support encryption")
        version = self._key.version
        if version is not None and version < info.min_encryption_version:
            raise KeyDisabledError(
                f"{uri}: version {version} is below the key's min_encryption_version "
                f"({info.min_encryption_version}); wrap with the versionless key instead"
            )
        if version is not None and version > info.latest_version:
            raise KeyNotFoundError(f"{uri}: the key has no version {version}")

    def _wrap_with(self, info: _KeyInfo, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        self._check_usable(info)
        bound = _b64(context_bytes(context))
        payload: dict[str, Any] = {"plaintext": _b64(dek)}
        if info.derived:
            payload["context"] = bound
            binding = BIND_DERIVED_CONTEXT
        else:
            payload["associated_data"] = bound
            binding = BIND_ASSOCIATED_DATA
        if self._key.version is not None:
            payload["key_version"] = self._key.version
        wrapped = self._stanza(self._post("encrypt", payload), "encrypt", binding, info.key_type)
        if self._key.version is not None and wrapped.key_id != self._key.uri:
            raise ProviderError(
                f"{self._key.uri}: encrypt used another key version ({wrapped.key_id})"
            )
        return wrapped

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Transit ``encrypt`` of ``dek``, the context bound as described in the module doc."""
        info, cached = self._current()
        try:
            return self._wrap_with(info, dek, context)
        except (KeyDisabledError, KeyNotFoundError):
            if not cached:
                raise
            # The cached description may be stale (key re-created, reconfigured): look again.
            info, _ = self._current(refresh=True)
            return self._wrap_with(info, dek, context)

    def _target(self, wrapped: WrappedKey, *, any_version: bool = False) -> tuple[KeyUri, str]:
        """The key version a stanza names, and its context binding, checked against this key
        (and against this KEK's version, if it has one, unless ``any_version``)."""
        if wrapped.provider != SCHEME:
            raise UnwrapError(f"{self.key_id}: cannot unwrap a {wrapped.provider!r} recipient")
        try:
            target = parse_key_uri(wrapped.key_id)
        except ConfigError:
            raise UnwrapError(
                f"{self.key_id}: the recorded key id {wrapped.key_id!r} is not a {SCHEME} URI"
            ) from None
        if target.version is None:
            raise UnwrapError(f"{self.key_id}: the recorded key id {wrapped.key_id} has no version")
        if not self._key.same_key(target):
            raise UnwrapError(f"{self.key_id}: {wrapped.key_id} was wrapped by another key")
        if not any_version and self._key.version not in (None, target.version):
            raise UnwrapError(
                f"{self.key_id}: {wrapped.key_id} was wrapped by another version of this key"
            )
        binding = wrapped.params.get("context", "")
        if binding not in (BIND_ASSOCIATED_DATA, BIND_DERIVED_CONTEXT):
            raise UnwrapError(
                f"{wrapped.key_id}: unknown context binding {binding!r} (this provider writes "
                f"{BIND_ASSOCIATED_DATA!r} or {BIND_DERIVED_CONTEXT!r})"
            )
        if not wrapped.ciphertext:
            raise UnwrapError(f"{wrapped.key_id}: the wrapped key is empty")
        return target, binding

    def _bound(self, binding: str, context: Mapping[str, str]) -> dict[str, str]:
        field = "context" if binding == BIND_DERIVED_CONTEXT else "associated_data"
        return {field: _b64(context_bytes(context))}

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Transit ``decrypt`` with the version recorded in ``wrapped``, under ``context``."""
        target, binding = self._target(wrapped)
        ciphertext = f"vault:v{target.version}:{_b64(wrapped.ciphertext)}"
        data = self._post(
            "decrypt", {"ciphertext": ciphertext, **self._bound(binding, context)}, target
        )
        try:
            plaintext = base64.b64decode(str(data.get("plaintext", "")), validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError(f"{wrapped.key_id}: decrypt returned malformed plaintext") from None
        if not plaintext:
            raise UnwrapError(f"{wrapped.key_id}: decrypt returned an empty data key")
        return plaintext

    def rewrap_latest(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey | None:
        """``wrapped`` moved to the key's newest version by Transit's ``rewrap`` endpoint.

        The data key never leaves the server. Returns ``wrapped`` itself when it already is at
        the newest version (no rewrap call), and None for stanzas bound with
        ``associated_data``, which Transit's ``rewrap`` cannot carry (rotation then wraps the
        data key again with ``encrypt``).
        """
        target, binding = self._target(wrapped, any_version=True)
        if binding != BIND_DERIVED_CONTEXT:
            return None
        info, _ = self._current()
        assert target.version is not None
        if target.version >= info.latest_version:
            return wrapped
        ciphertext = f"vault:v{target.version}:{_b64(wrapped.ciphertext)}"
        data = self._post(
            "rewrap", {"ciphertext": ciphertext, **self._bound(binding, context)}, target
        )
        return self._stanza(data, "rewrap", binding, wrapped.algorithm)
