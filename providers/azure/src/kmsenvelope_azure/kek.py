"""The Azure Key Vault / Managed HSM key-encryption key.

* **Versions.** A versionless URI names the key's *current* version: ``wrap`` asks the vault
  for it (``get``; cached for ``key_cache_ttl`` seconds, default 30) and the ``WrappedKey``
  records ``azure-kv:<vault>/keys/<name>/<version>``. The SDK's clients bind a versionless id
  once and never follow a rotation; this class re-resolves instead. ``unwrap`` always uses the
  version recorded in the envelope, so old envelopes keep opening after a rotation.
* **RSA / RSA-HSM** keys wrap with ``RSA-OAEP-256`` (setting ``algorithm``) using the public key
  locally (``wrap_locally = false`` sends it to the service instead); unwrap is done by the
  service.
* **oct / oct-HSM** keys (Managed HSM) wrap and unwrap in the service, always: by default with
  ``A256GCM`` through ``encrypt``/``decrypt``, the encryption context as AAD; with
  ``oct_algorithm = "A256KW"`` (or another key-wrap algorithm) through ``wrapKey``/``unwrapKey``.
  Stanzas of every algorithm keep unwrapping whatever the setting says.
* **Context.** A*GCM stanzas carry the context into the HSM (AAD, see
  :func:`~kmsenvelope_azure.algorithms.context_aad`): the service refuses to decrypt under
  another context. RSA-OAEP and AES key wrap take no AAD, so for them the envelope's header
  MAC alone binds the context.

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

from kmsenvelope import ConfigError, ProviderError, WrappedKey
from kmsenvelope.errors import KeyDisabledError, KeyNotFoundError, UnwrapError

from .algorithms import (
    AAD_LABEL,
    GCM_ALGORITHMS,
    GCM_IV_SIZE,
    GCM_TAG_SIZE,
    OCT_ALGORITHMS,
    OCT_KEY_TYPES,
    RSA_1_5,
    RSA_ALGORITHMS,
    RSA_KEY_TYPES,
    context_aad,
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


_PATHS: dict[Operation, str] = {
    "wrapKey": "wrapkey",
    "unwrapKey": "unwrapkey",
    "encrypt": "encrypt",
    "decrypt": "decrypt",
}


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

    def _check_usable(self, state: _KeyState, operation: Operation) -> None:
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
        if state.key_ops is None or operation.lower() in state.key_ops:
            return
        ops = ", ".join(sorted(state.key_ops))
        if operation == "encrypt":
            raise ProviderError(
                f"{where} does not allow encrypt (its key_ops are {ops}); "
                f"{self._settings.oct_algorithm} binds the encryption context in the HSM "
                "through encrypt/decrypt: allow encrypt and decrypt on the key, or set "
                'oct_algorithm = "A256KW" in [providers.azure-kv] to use wrapKey'
            )
        raise ProviderError(
            f"{where} does not allow wrapKey (its key_ops are {ops}); create a key that "
            "allows wrapKey and unwrapKey"
        )

    # -- service calls ----------------------------------------------------------------------

    def _call(
        self, operation: Operation, target: KeyUri, payload: Mapping[str, str]
    ) -> dict[str, Any]:
        """POST ``payload`` to the key version's ``operation`` endpoint; the JSON answer."""
        request = HttpRequest(
            "POST",
            f"/keys/{target.name}/{target.version}/{_PATHS[operation]}",
            json=dict(payload),
        )
        try:
            response = self._client.send_request(request)
            response.raise_for_status()
            body: Any = response.json()
        except (AzureError, ValueError) as exc:
            raise map_azure_error(
                exc, key=self._key, operation=operation, version=target.version
            ) from exc
        if not isinstance(body, dict):
            raise ProviderError(f"{target.uri}: {operation} returned a malformed response")
        return body

    @staticmethod
    def _field(body: Mapping[str, Any], name: str, operation: Operation, target: KeyUri) -> bytes:
        """The base64url field ``name`` of a service answer, decoded."""
        value = body.get(name)
        try:
            if not isinstance(value, str):
                raise ValueError(f"no {name!r}")
            return _unb64url(value)
        except (ValueError, binascii.Error):
            raise ProviderError(
                f"{target.uri}: {operation} returned a malformed response (no base64url {name!r})"
            ) from None

    def _remote(self, operation: Operation, target: KeyUri, algorithm: str, value: bytes) -> bytes:
        """wrapKey/unwrapKey: the service's ``value`` for ours (no AAD exists for these)."""
        body = self._call(operation, target, {"alg": algorithm, "value": _b64url(value)})
        return self._field(body, "value", operation, target)

    def _gcm_encrypt(
        self, target: KeyUri, algorithm: str, dek: bytes, context: Mapping[str, str]
    ) -> bytes:
        """``iv || ciphertext || tag`` from the HSM's encrypt, the context as AAD.

        The service chooses the IV (the SDK refuses a caller's IV for AES-GCM).
        """
        payload = {"alg": algorithm, "value": _b64url(dek), "aad": _b64url(context_aad(context))}
        body = self._call("encrypt", target, payload)
        sealed = self._field(body, "value", "encrypt", target)
        iv = self._field(body, "iv", "encrypt", target)
        tag = self._field(body, "tag", "encrypt", target)
        if len(iv) != GCM_IV_SIZE or len(tag) != GCM_TAG_SIZE or len(sealed) != len(dek):
            raise ProviderError(
                f"{target.uri}: encrypt returned an unexpected {algorithm} result ({len(iv)}-byte "
                f"IV, {len(sealed)}-byte ciphertext, {len(tag)}-byte tag; expected "
                f'{GCM_IV_SIZE}, {len(dek)}, {GCM_TAG_SIZE}); set oct_algorithm = "A256KW" '
                "if this HSM's AES-GCM differs"
            )
        return iv + sealed + tag

    def _gcm_decrypt(
        self, target: KeyUri, wrapped: WrappedKey, algorithm: str, context: Mapping[str, str]
    ) -> bytes:
        """The data key from an ``iv || ciphertext || tag`` stanza, decrypted by the HSM."""
        scheme = wrapped.params.get("aad")
        if scheme != AAD_LABEL:
            raise UnwrapError(
                f"{wrapped.key_id}: {algorithm} stanza with an unknown AAD scheme {scheme!r} "
                f"(this provider writes {AAD_LABEL!r})"
            )
        blob = wrapped.ciphertext
        if len(blob) <= GCM_IV_SIZE + GCM_TAG_SIZE:
            raise UnwrapError(f"{wrapped.key_id}: the wrapped key is too short for {algorithm}")
        iv, sealed, tag = blob[:GCM_IV_SIZE], blob[GCM_IV_SIZE:-GCM_TAG_SIZE], blob[-GCM_TAG_SIZE:]
        payload = {
            "alg": algorithm,
            "value": _b64url(sealed),
            "iv": _b64url(iv),
            "tag": _b64url(tag),
            "aad": _b64url(context_aad(context)),
        }
        return self._field(self._call("decrypt", target, payload), "value", "decrypt", target)

    # -- KeyEncryptionKey -------------------------------------------------------------------

    def _wrap_with(self, state: _KeyState, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        target = KeyUri(self._key.vault_url, state.name, state.version)
        if state.key_type not in RSA_KEY_TYPES | OCT_KEY_TYPES:
            raise ProviderError(
                f"{target.uri}: a {state.key_type or 'typeless'} key cannot wrap data keys; "
                "use an RSA, RSA-HSM or oct-HSM key"
            )
        if state.key_type in RSA_KEY_TYPES:
            # RSA-OAEP has no AAD: the context cannot reach the service (the header MAC binds it).
            self._check_usable(state, "wrapKey")
            algorithm = self._settings.algorithm
            if self._settings.wrap_locally and state.public_key is not None:
                ciphertext = rsa_wrap(state.public_key, algorithm, dek)
            else:
                ciphertext = self._remote("wrapKey", target, algorithm, dek)
            return WrappedKey(SCHEME, target.uri, algorithm, ciphertext)
        # Symmetric keys never leave the HSM: wrap in the service, never locally.
        algorithm = self._settings.oct_algorithm
        if algorithm in GCM_ALGORITHMS:
            self._check_usable(state, "encrypt")
            ciphertext = self._gcm_encrypt(target, algorithm, dek, context)
            return WrappedKey(SCHEME, target.uri, algorithm, ciphertext, {"aad": AAD_LABEL})
        self._check_usable(state, "wrapKey")
        return WrappedKey(
            SCHEME, target.uri, algorithm, self._remote("wrapKey", target, algorithm, dek)
        )

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Wrap ``dek`` with the key (its current version if the URI has none).

        oct-HSM keys with A*GCM send ``context`` to the HSM as AAD; RSA-OAEP and AES key wrap
        have no AAD, so for them only the envelope's header MAC binds it.
        """
        state, cached = self._current()
        try:
            return self._wrap_with(state, dek, context)
        except (KeyDisabledError, KeyNotFoundError):
            if not cached:
                raise
            # The cached version may have been disabled, deleted or replaced since: look again.
            state, _ = self._current(refresh=True)
            return self._wrap_with(state, dek, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Unwrap in the service with the key version recorded in ``wrapped``.

        An A*GCM stanza is decrypted with ``context`` as AAD: under another context the HSM
        refuses (``UnwrapError``). Key-wrap and RSA stanzas unwrap as they always did.
        """
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
        if algorithm in GCM_ALGORITHMS:
            return self._gcm_decrypt(target, wrapped, algorithm, context)
        return self._remote("unwrapKey", target, algorithm, wrapped.ciphertext)
