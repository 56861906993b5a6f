"""The Azure Key Vault / Managed HSM key-encryption key.

* **Versions.** A versionless URI names the key's *current* version: ``wrap`` asks the vault
  for it (``get``; cached for ``key_cache_ttl`` seconds, default 30) and the ``WrappedKey``
  records ``azure-kv:<vault>/keys/<name>/<version>``. The SDK's clients bind a versionless id
  once and never follow a rotation; this class re-resolves instead. ``unwrap`` always uses the
  version recorded in the envelope, so old envelopes keep opening after a rotation.
* **RSA / RSA-HSM** keys wrap with ``RSA-OAEP-256`` (setting ``algorithm``) using the public key
  locally (``wrap_locally = false`` sends it to the service instead); unwrap is done by the
  service.
* **oct / oct-HSM** keys (Managed HSM) wrap and unwrap with ``A256KW`` (setting
  ``oct_algorithm``, e.g. ``CKM_AES_KEY_WRAP_PAD``) in the service, always.
* **Context.** Key Vault's wrapKey has no additional authenticated data, so the encryption
  context is not bound here; the envelope's header MAC binds it.

Remote operations are sent through the ``KeyClient``'s own pipeline (challenge authentication,
bounded retries, TLS settings) with ``KeyClient.send_request``. ``CryptographyClient`` is not
used: it cannot be told to stay remote, and for an ``oct`` key whose material it cannot read it
"wraps" locally with a random key that nothing can ever unwrap.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import KeyClient, KeyVaultKey
from cryptography.hazmat.primitives.asymmetric import rsa

from kmsenvelope import (
    ConfigError,
    KeyDisabledError,
    KeyNotFoundError,
    ProviderError,
    UnwrapError,
    WrappedKey,
)

from .algorithms import (
    OCT_ALGORITHMS,
    OCT_KEY_TYPES,
    RSA_1_5,
    RSA_ALGORITHMS,
    RSA_KEY_TYPES,
    rsa_public_key,
    rsa_wrap,
)
from .errors import Operation, map_azure_error
from .settings import AzureSettings
from .uri import SCHEME, KeyUri, parse_key_uri

__all__ = ["AzureKeyVaultKEK"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class _KeyState:
    """What ``get`` said about one key version (no private material: there is none)."""

    name: str
    version: str
    key_type: str
    key_ops: frozenset[str] | None
    enabled: bool
    not_before: datetime | None
    expires_on: datetime | None
    public_key: rsa.RSAPublicKey | None
    fetched_at: float


class AzureKeyVaultKEK:
    """A Key Vault or Managed HSM key, as a kmsenvelope ``KeyEncryptionKey``."""

    def __init__(
        self,
        key: KeyUri,
        client: KeyClient,
        settings: AzureSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._key = key
        self._client = client
        self._settings = settings
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._state: _KeyState | None = None

    @property
    def key_id(self) -> str:
        """The canonical URI this KEK was opened with (versionless or versioned)."""
        return self._key.uri

    def __repr__(self) -> str:
        return f"AzureKeyVaultKEK({self._key.uri!r})"

    def latest(self) -> AzureKeyVaultKEK:
        """This key at its current version (versionless; resolved at each wrap), for rotation."""
        if self._key.version is None:
            return self
        versionless = KeyUri(self._key.vault_url, self._key.name)
        return AzureKeyVaultKEK(
            versionless, self._client, self._settings, clock=self._clock, now=self._now
        )

    # -- key metadata -----------------------------------------------------------------------

    def _fetch(self) -> _KeyState:
        try:
            found = self._client.get_key(self._key.name, self._key.version)
        except (AzureError, ValueError) as exc:
            raise map_azure_error(exc, key=self._key, operation="get") from exc
        return self._state_of(found)

    def _state_of(self, found: KeyVaultKey) -> _KeyState:
        name, version = self._key.name, found.properties.version
        kid_path = urlsplit(found.id or "").path.strip("/").split("/")
        if len(kid_path) == 3 and kid_path[0] == "keys":
            name, version = kid_path[1], kid_path[2]
        if not version or name.lower() != self._key.name.lower():
            raise ProviderError(f"{self._key.uri}: get returned an unexpected key id {found.id!r}")
        key_type = str(getattr(found.key_type, "value", found.key_type) or "").upper()
        ops = found.key_operations
        # No (or an empty) key_ops list means the service did not restrict the key.
        key_ops = frozenset(str(getattr(op, "value", op)).lower() for op in ops) if ops else None
        public_key = None
        if key_type in RSA_KEY_TYPES:
            n, e = getattr(found.key, "n", None), getattr(found.key, "e", None)
            if isinstance(n, bytes) and isinstance(e, bytes) and n and e:
                public_key = rsa_public_key(n, e)
        props = found.properties
        return _KeyState(
            name=name,
            version=version,
            key_type=key_type,
            key_ops=key_ops,
            enabled=props.enabled is not False,
            not_before=props.not_before,
            expires_on=props.expires_on,
            public_key=public_key,
            fetched_at=self._clock(),
        )

    def _current(self, *, refresh: bool = False) -> tuple[_KeyState, bool]:
        """The key's state, and whether it came from the cache."""
        with self._lock:
            state = self._state
        ttl = self._settings.key_cache_ttl
        if not refresh and state is not None and self._clock() - state.fetched_at < ttl:
            return state, True
        state = self._fetch()
        with self._lock:
            self._state = state
        return state, False

    def _check_usable(self, state: _KeyState) -> None:
        where = f"key {KeyUri(self._key.vault_url, state.name, state.version).uri}"
        if not state.enabled:
            raise KeyDisabledError(
                f"{where} is disabled; enable it or rotate to a new version before wrapping"
            )
        now = self._now()
        if state.not_before is not None and now < state.not_before:
            raise KeyDisabledError(
                f"{where} is not valid before {state.not_before.isoformat()}; it cannot wrap yet"
            )
        if state.expires_on is not None and now >= state.expires_on:
            raise KeyDisabledError(
                f"{where} expired at {state.expires_on.isoformat()}; it can still unwrap old "
                "envelopes, but new ones need a new key version (rotate it)"
            )
        if state.key_ops is not None and "wrapkey" not in state.key_ops:
            raise ProviderError(
                f"{where} does not allow wrapKey (its key_ops are "
                f"{', '.join(sorted(state.key_ops))}); create a key that allows wrapKey and "
                "unwrapKey"
            )

    # -- service calls ----------------------------------------------------------------------

    def _remote(self, operation: Operation, target: KeyUri, algorithm: str, value: bytes) -> bytes:
        path = "wrapkey" if operation == "wrapKey" else "unwrapkey"
        request = HttpRequest(
            "POST",
            f"/keys/{target.name}/{target.version}/{path}",
            json={"alg": algorithm, "value": _b64url(value)},
        )
        try:
            response = self._client.send_request(request)
            response.raise_for_status()
            body: Any = response.json()
        except (AzureError, ValueError) as exc:
            raise map_azure_error(
                exc, key=self._key, operation=operation, version=target.version
            ) from exc
        result = body.get("value") if isinstance(body, dict) else None
        try:
            if not isinstance(result, str):
                raise ValueError("no 'value'")
            return _unb64url(result)
        except (ValueError, binascii.Error):
            raise ProviderError(
                f"{target.uri}: {operation} returned a malformed response (no base64url 'value')"
            ) from None

    # -- KeyEncryptionKey -------------------------------------------------------------------

    def _wrap_with(self, state: _KeyState, dek: bytes) -> WrappedKey:
        target = KeyUri(self._key.vault_url, state.name, state.version)
        if state.key_type not in RSA_KEY_TYPES | OCT_KEY_TYPES:
            raise ProviderError(
                f"{target.uri}: a {state.key_type or 'typeless'} key cannot wrap data keys; "
                "use an RSA, RSA-HSM or oct-HSM key"
            )
        self._check_usable(state)
        if state.key_type in RSA_KEY_TYPES:
            algorithm = self._settings.algorithm
            if self._settings.wrap_locally and state.public_key is not None:
                ciphertext = rsa_wrap(state.public_key, algorithm, dek)
            else:
                ciphertext = self._remote("wrapKey", target, algorithm, dek)
        else:
            # Symmetric keys never leave the HSM: wrap in the service, never locally.
            algorithm = self._settings.oct_algorithm
            ciphertext = self._remote("wrapKey", target, algorithm, dek)
        return WrappedKey(SCHEME, target.uri, algorithm, ciphertext)

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Wrap ``dek`` with the key (its current version if the URI has none).

        ``context`` is not sent: Key Vault's wrapKey has no AAD (the header MAC binds it).
        """
        state, cached = self._current()
        try:
            return self._wrap_with(state, dek)
        except (KeyDisabledError, KeyNotFoundError):
            if not cached:
                raise
            # The cached version may have been disabled, deleted or replaced since: look again.
            state, _ = self._current(refresh=True)
            return self._wrap_with(state, dek)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Unwrap in the service with the key version recorded in ``wrapped``."""
        if wrapped.provider != SCHEME:
            raise UnwrapError(f"{self.key_id}: cannot unwrap a {wrapped.provider!r} recipient")
        try:
            target = parse_key_uri(wrapped.key_id)
        except ConfigError:
            raise UnwrapError(
                f"{self.key_id}: the recorded key id {wrapped.key_id!r} is not an azure-kv URI"
            ) from None
        if target.version is None:
            raise UnwrapError(f"{self.key_id}: the recorded key id {wrapped.key_id} has no version")
        if not self._key.same_key(target):
            raise UnwrapError(f"{self.key_id}: {wrapped.key_id} was wrapped by another key")
        if self._key.version is not None and target.version != self._key.version:
            raise UnwrapError(
                f"{self.key_id}: {wrapped.key_id} was wrapped by another version of this key"
            )
        algorithm = wrapped.algorithm.upper()
        if algorithm not in RSA_ALGORITHMS | OCT_ALGORITHMS:
            raise UnwrapError(f"{wrapped.key_id}: unsupported wrap algorithm {wrapped.algorithm!r}")
        if algorithm == RSA_1_5 and not self._settings.allow_rsa1_5:
            raise ProviderError(
                f"{wrapped.key_id}: refusing to unwrap RSA1_5 (PKCS#1 v1.5) data; set "
                "allow_rsa1_5 = true in [providers.azure-kv] to read legacy envelopes"
            )
        return self._remote("unwrapKey", target, algorithm, wrapped.ciphertext)
