"""The KEK: a key in a PKCS#11 token that wraps and unwraps data keys.

Opening a KEK validates the URI and the settings; the module is loaded, the token found and
logged in on the first ``wrap``/``unwrap``, so an envelope listing an unreachable HSM among
other recipients still opens with the others.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kmsenvelope.errors import (
    ConfigError,
    KeyNotFoundError,
    KmsEnvelopeError,
    ProviderError,
    UnwrapError,
)
from kmsenvelope.kek import WrappedKey

from . import _p11
from .errors import is_session_lost, translate
from .mechanisms import (
    AAD_LABEL,
    KWP,
    gcm_algorithm,
    gcm_unwrap,
    gcm_wrap,
    kwp_unwrap,
    kwp_wrap,
    oaep_algorithm,
    oaep_hash_of,
    rsa_unwrap,
    rsa_wrap,
)
from .pool import (
    PoolClosedError,
    TokenRef,
    drop_pool,
    get_pool,
    load_module,
    resolve_token,
    serialized,
)
from .settings import Pkcs11Settings
from .uri import Pkcs11Uri, parse_uri

__all__ = ["Pkcs11KEK"]

T = TypeVar("T")
_log = logging.getLogger("kmsenvelope.pkcs11")
_GCM = re.compile(r"AES-(128|192|256)-GCM")
_A = _p11.Attribute


@dataclass(frozen=True, slots=True)
class _Key:
    """The key found in one session: python-pkcs11 objects plus what the envelope records."""

    kind: str  # "aes" or "rsa"
    obj: Any  # the secret key, or the RSA private key
    public: Any  # the RSA public key (None for AES, or if the token has none)
    bits: int
    uri: Pkcs11Uri  # token, object label and CKA_ID of this exact key


class Pkcs11KEK:
    """A key-encryption key in a PKCS#11 token, named by an RFC 7512 URI."""

    def __init__(self, uri: str, settings: Pkcs11Settings) -> None:
        self._parsed = parse_uri(uri, settings.scheme)
        self._key_id = uri
        self._settings = settings
        self._token: TokenRef | None = None
        self._token_lock = threading.Lock()
        self._kind: str | None = None

    @property
    def key_id(self) -> str:
        """The URI this KEK was opened with."""
        return self._key_id

    @property
    def settings(self) -> Pkcs11Settings:
        """The validated settings (``repr`` hides the PIN)."""
        return self._settings

    def __repr__(self) -> str:
        return f"Pkcs11KEK({self._key_id!r}, module={self._settings.module!r})"

    def recognizes(self, key_id: str) -> bool:
        """Whether an envelope's recorded ``key_id`` names this key: every attribute this URI
        names (token, serial, label, CKA_ID) is recorded with the same value. No HSM call."""
        try:
            recorded = parse_uri(key_id, self._settings.scheme)
        except ConfigError:
            return False
        mine = self._parsed
        pairs = (
            (mine.token, recorded.token),
            (mine.serial, recorded.serial),
            (mine.object, recorded.object),
            (mine.id, recorded.id),
        )
        if all(want is None for want, _ in pairs):
            return False
        return all(want is None or want == got for want, got in pairs)

    # -- plumbing -----------------------------------------------------------------------------

    def _token_ref(self, lib: Any) -> TokenRef:
        with self._token_lock:
            if self._token is None:
                s = self._settings
                self._token = resolve_token(
                    lib,
                    s.module,
                    self._parsed.token if self._parsed.token is not None else s.token,
                    self._parsed.serial,
                    f"token=… in the key URI or {s.setting('token')}",
                )
            return self._token

    def _find(self, session: Any, token: TokenRef) -> _Key:
        """Look the key up in ``session`` (LOCK held): exactly one AES or RSA private key."""
        query: dict[Any, Any] = {}
        if self._parsed.object is not None:
            query[_A.LABEL] = self._parsed.object
        if self._parsed.id is not None:
            query[_A.ID] = self._parsed.id
        found: list[Any] = []
        if self._parsed.type in (None, "secret-key"):
            found += session.get_objects({**query, _A.CLASS: _p11.ObjectClass.SECRET_KEY})
        if self._parsed.type in (None, "private"):
            found += session.get_objects({**query, _A.CLASS: _p11.ObjectClass.PRIVATE_KEY})
        if not found:
            raise KeyNotFoundError(f"{self._key_id}: no such key in {token}")
        if len(found) > 1:
            raise ConfigError(
                f"{self._key_id}: {len(found)} keys in {token} match; add id=%XX… or "
                "type=secret-key|private to the URI to pick one"
            )
        obj = found[0]
        key_type = obj[_A.KEY_TYPE]
        label = obj[_A.LABEL] or None
        key_id = bytes(obj[_A.ID] or b"") or None
        uri = self._parsed.with_key(token=token.label, object_label=label, key_id=key_id)
        if obj.object_class == _p11.ObjectClass.SECRET_KEY:
            if key_type != _p11.KeyType.AES:
                raise ProviderError(f"{self._key_id}: the secret key is not an AES key")
            self._kind = "aes"
            return _Key("aes", obj, None, int(obj[_A.VALUE_LEN]) * 8, uri)
        if key_type != _p11.KeyType.RSA:
            raise ProviderError(f"{self._key_id}: the private key is not an RSA key")
        pub_query = {_A.CLASS: _p11.ObjectClass.PUBLIC_KEY, _A.KEY_TYPE: _p11.KeyType.RSA}
        if key_id is not None:
            pub_query[_A.ID] = key_id
        if label is not None:
            pub_query[_A.LABEL] = label
        publics = list(session.get_objects(pub_query))
        self._kind = "rsa"
        return _Key("rsa", obj, publics[0] if len(publics) == 1 else None, 0, uri)

    def _hint(self, algorithm: str | None = None) -> str:
        """What to change when the token rejects a mechanism (names the setting).

        ``algorithm``: when unwrapping, the algorithm the envelope recorded.
        """
        s = self._settings
        if self._kind == "rsa" and algorithm is not None:
            return f"this token cannot decrypt {algorithm} (SoftHSM2 supports only SHA-1)"
        if self._kind == "rsa":
            return (
                f"RSA-OAEP with {s.oaep_hash.upper()} may be unsupported by this token "
                f"(SoftHSM2 supports only SHA-1): set {s.setting('oaep_hash')} to a hash it "
                'supports, e.g. oaep_hash = "sha1"'
            )
        if (algorithm == KWP) if algorithm is not None else (s.aes_mechanism == "kwp"):
            return (
                f"set {s.setting('kwp_mechanism')} to the token's AES key wrap with padding "
                "(0x210A CKM_AES_KEY_WRAP_PAD for SoftHSM2, 0x8000216F for AWS CloudHSM; "
                f'currently {s.kwp_mechanism:#x}) or use aes_mechanism = "gcm"'
            )
        return f'set {s.setting("aes_mechanism")} = "kwp" if the token lacks CKM_AES_GCM'

    def _run(self, doing: str, op: Callable[[Any, _Key], T], *, unwrapping: str | None = None) -> T:
        """Run ``op(session, key)`` with LOCK held; retry once on a lost session or login.

        ``unwrapping``: the algorithm of the wrapped key being unwrapped, if that is the job.
        """
        s = self._settings
        for attempt in (1, 2):
            lib = load_module(s.module, s.module_source)  # loaded once; again after close_all()
            token = self._token_ref(lib)
            pool = get_pool(lib, token, s.pin, s.max_sessions, self._key_id, s.pin_source)
            try:
                with pool.session() as session, serialized():
                    return op(session, self._find(session, token))
            except PoolClosedError:
                if attempt == 1:
                    continue
                raise
            except KmsEnvelopeError:
                raise
            except Exception as exc:
                if attempt == 1 and is_session_lost(exc):
                    _log.debug("%s: session lost (%s); logging in again", token, type(exc).__name__)
                    drop_pool(pool)
                    continue
                raise translate(
                    exc,
                    doing=doing,
                    where=self._key_id,
                    unwrapping=unwrapping is not None,
                    unsupported_hint=self._hint(unwrapping),
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the KEK protocol ---------------------------------------------------------------------

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Wrap ``dek``: AES-GCM (context as AAD) or AES-KWP for AES keys, OAEP for RSA."""
        if not isinstance(dek, bytes | bytearray) or not dek:
            raise TypeError("dek must be non-empty bytes")
        data = bytes(dek)
        s = self._settings

        def op(session: Any, key: _Key) -> WrappedKey:
            params: dict[str, str]
            if key.kind == "aes" and s.aes_mechanism == "gcm":
                blob = gcm_wrap(key.obj, data, context, s.gcm_iv, s.setting("gcm_iv"))
                algorithm, params = gcm_algorithm(key.bits), {"aad": AAD_LABEL}
            elif key.kind == "aes":
                blob = kwp_wrap(session, key.obj, data, s.kwp_mechanism)
                algorithm, params = KWP, {"mechanism": f"{s.kwp_mechanism:#x}"}
            else:
                if key.public is None:
                    raise KeyNotFoundError(
                        f"{self._key_id}: the token holds the RSA private key but no matching "
                        "public key (same label and CKA_ID), which wrapping needs"
                    )
                blob = rsa_wrap(key.public, data, s.oaep_hash)
                algorithm, params = oaep_algorithm(s.oaep_hash), {"mgf": f"mgf1-{s.oaep_hash}"}
            _log.debug("wrapped a data key with %s (%s)", key.uri, algorithm)
            return WrappedKey(s.scheme, str(key.uri), algorithm, blob, params)

        return self._run("wrap", op)

    def _check_recipient(self, wrapped: WrappedKey, key: _Key) -> None:
        """Refuse a wrapped key recorded for another token or key before asking the HSM."""
        try:
            recorded = parse_uri(wrapped.key_id, self._settings.scheme)
        except ConfigError:
            raise UnwrapError(f"{wrapped.key_id}: not a key id this provider wrote") from None
        mine = key.uri
        other = (
            (recorded.token is not None and recorded.token != mine.token)
            or (recorded.id is not None and mine.id is not None and recorded.id != mine.id)
            or (
                recorded.id is None
                and recorded.object is not None
                and recorded.object != mine.object
            )
        )
        if other:
            raise UnwrapError(f"{wrapped.key_id}: wrapped by another key, not {mine}")

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Return the data key in ``wrapped``; ``UnwrapError`` if the token rejects it."""
        s = self._settings
        if wrapped.provider != s.scheme:
            raise UnwrapError(
                f"{wrapped.key_id}: wrapped by provider {wrapped.provider!r}, not {s.scheme!r}"
            )
        algorithm = wrapped.algorithm

        def op(session: Any, key: _Key) -> bytes:
            self._check_recipient(wrapped, key)
            if key.kind == "aes" and _GCM.fullmatch(algorithm):
                if algorithm != gcm_algorithm(key.bits):
                    raise UnwrapError(f"{wrapped.key_id}: {algorithm} does not fit this key")
                if wrapped.params.get("aad", AAD_LABEL) != AAD_LABEL:
                    raise UnwrapError(f"{wrapped.key_id}: unknown AAD scheme")
                dek = gcm_unwrap(key.obj, wrapped.ciphertext, context)
            elif key.kind == "aes" and algorithm == KWP:
                recorded = wrapped.params.get("mechanism")
                if recorded is not None and recorded != f"{s.kwp_mechanism:#x}":
                    # Never take a mechanism from the envelope: it is untrusted input.
                    raise UnwrapError(
                        f"{wrapped.key_id}: wrapped with mechanism {recorded} but "
                        f"{s.setting('kwp_mechanism')} is {s.kwp_mechanism:#x}; set it to "
                        f"{recorded} to unwrap"
                    )
                dek = kwp_unwrap(key.obj, wrapped.ciphertext, s.kwp_mechanism)
            elif key.kind == "rsa" and (hash_name := oaep_hash_of(algorithm)) is not None:
                dek = rsa_unwrap(key.obj, wrapped.ciphertext, hash_name)
            else:
                raise UnwrapError(
                    f"{wrapped.key_id}: algorithm {algorithm!r} cannot be unwrapped by "
                    f"{'an AES' if key.kind == 'aes' else 'an RSA'} key"
                )
            _log.debug("unwrapped a data key with %s (%s)", key.uri, algorithm)
            return dek

        return self._run("unwrap", op, unwrapping=algorithm)
