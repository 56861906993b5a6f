"""The envelope engine: resolve recipients, wrap a fresh data key, write header and payload;
and the reverse: find a recipient that unwraps, check the header, read the payload."""

from __future__ import annotations

import hmac
import io
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .auditing import AuditSinkError, AuditTrail
from .cache import DataKeyCache
from .config import Config, load_config
from .errors import (
    AuthenticationError,
    ConfigError,
    KmsEnvelopeError,
    ProviderError,
    UnknownSchemeError,
)
from .format.chunks import SINGLE_FINAL_NONCE, TAG_SIZE, payload_length
from .format.compact import (
    COMPACT_PREFIX,
    WHITESPACE,
    ArmorWriter,
    PrefixedReader,
    from_compact,
    open_envelope_stream,
    spool_compact,
    to_compact,
)
from .format.header import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LIMITS,
    MAGIC,
    NONCE_SIZE,
    Header,
    Limits,
    check_chunk_size,
    encode_new_header,
    header_fields,
    read_header,
    validate_context,
)
from .format.keyschedule import DEK_SIZE, MAC_SIZE, derive_keys, hmac_sha256
from .inspection import EnvelopeInfo, inspect_envelope
from .kek import NO_PARAMS, WRAPPED_KEY_SETTERS, KeyEncryptionKey, WrappedKey, scheme_of
from .known_headers import NONCE_AT, NONCE_END, KnownHeaders
from .pipeline import (
    decrypt_bytes,
    decrypt_payload,
    encrypt_bytes,
    encrypt_payload,
)
from .plugins import ProviderRegistry
from .trust import (
    KEK_CACHE_SIZE,
    LruCache,
    RecipientFailures,
    TrustPolicy,
    TrustSettings,
    UnwrapAttempts,
    scheme_or_none,
)

# EnvelopeInfo, inspect_envelope (inspection.py) and KEK_CACHE_SIZE (trust.py) are re-exported
# for code that imported them from here.
__all__ = ["KEK_CACHE_SIZE", "Engine", "EnvelopeInfo", "Recipient", "inspect_envelope"]

Recipient = str | KeyEncryptionKey
_new = object.__new__
_set_provider, _set_key_id, _set_algorithm, _set_ciphertext, _set_params = WRAPPED_KEY_SETTERS
MAX_WRAP_THREADS = 8
SMALL_PAYLOAD = 64 << 10
"""Payloads of in-memory envelopes up to this size are sliced (copied), larger ones viewed."""
Progress = Callable[[int], None]


def _as_error(exc: Exception) -> KmsEnvelopeError:
    """What a provider raised, as one of our errors: ours as they are, anything else (a plugin
    bug) as a ``ProviderError`` naming its type."""
    if isinstance(exc, KmsEnvelopeError):
        return exc
    error = ProviderError(f"provider failed unexpectedly: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class Engine:
    """Encrypts and decrypts envelopes using a provider registry and a configuration.

    ``keys`` are KEK objects tried before the registry when decrypting (useful for KEKs that
    exist only in code). Which other keys decryption, re-wrapping and rotation may open through
    a provider is decided by a :class:`~kmsenvelope.trust.TrustPolicy`, so that an envelope from
    an untrusted source cannot make this process call a KMS, HSM or host its author chose:

    - ``allowed_keys`` (default: the config's): when set, exactly the key URIs matching these
      patterns (``*`` and ``?``, ``fnmatch``, case-sensitive);
    - when unset (strict, the default): keys the user named — the config's recipients,
      ``trusted_keys``, keys this engine encrypted to — and their versions, plus ``local:`` keys;
    - ``allow``: extra patterns added in both cases (the CLI's ``--allow``).

    ``max_unwrap_attempts`` (default: the config's, 8) caps the provider unwrap calls one
    envelope can cause. An ``Engine`` is thread-safe; opened KEKs are kept in a bounded LRU.

    ``audit`` (default: built from the config's ``[audit]`` table on first use) records one
    event per ``wrap`` and ``unwrap`` call -- KEKs passed in code included, failed attempts
    with their error class -- and fails the operation when a sink fails (unless best effort):
    a data key whose unwrap could not be recorded is never returned nor used.
    """

    def __init__(
        self,
        *,
        registry: ProviderRegistry | None = None,
        config: Config | None = None,
        keys: Sequence[KeyEncryptionKey] = (),
        limits: Limits = DEFAULT_LIMITS,
        cache: DataKeyCache | None = None,
        allowed_keys: Sequence[str] | None = None,
        allow: Sequence[str] = (),
        trusted_keys: Sequence[str] = (),
        max_unwrap_attempts: int | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._trust_settings = TrustSettings.checked(
            allowed_keys, allow, trusted_keys, max_unwrap_attempts
        )
        self._registry = registry
        self._config = config
        self._keys = tuple(keys)
        self.limits = limits
        self.data_key_cache = cache  # opt-in reuse of data keys in memory (cache.py)
        self._cache: LruCache[KeyEncryptionKey] = LruCache(KEK_CACHE_SIZE)
        self._lock = threading.Lock()
        self._trust: TrustPolicy | None = None
        self._settings_checked: set[str] = set()
        self._audit = audit
        # key id -> (its scheme, the KEKs of ``keys`` to try for it): built on first use.
        self._own: dict[str, tuple[str | None, tuple[KeyEncryptionKey, ...]]] | None = None
        self._attempt_limit: int | None = None
        self._default_context: Mapping[str, str] | None = None  # see _context
        self._known = KnownHeaders()  # layouts of headers decrypted before (known_headers.py)

    @property
    def registry(self) -> ProviderRegistry:
        """The provider registry (loaded from entry points on first use if not given)."""
        if self._registry is None:
            self._registry = ProviderRegistry.load()
        return self._registry

    @property
    def config(self) -> Config:
        """The effective configuration (loaded on first use if not given)."""
        if self._config is None:
            self._config = load_config()
        return self._config

    @property
    def allowed_keys(self) -> tuple[str, ...] | None:
        """The configured key-URI patterns (None: strict, only named keys; see the class)."""
        own = self._trust_settings.allowed_keys
        return own if own is not None else self.config.allowed_keys

    @property
    def max_unwrap_attempts(self) -> int:
        """Provider unwrap calls one envelope may cause."""
        limit = self._attempt_limit
        if limit is None:  # both sources are immutable: worked out once
            own = self._trust_settings.max_unwrap_attempts
            limit = self._attempt_limit = (
                own if own is not None else self.config.max_unwrap_attempts
            )
        return limit

    @property
    def trust(self) -> TrustPolicy:
        """The policy deciding which recorded keys may be contacted (built on first use)."""
        with self._lock:
            if self._trust is not None:
                return self._trust
        policy = self._trust_settings.policy(self.config)  # unlocked: loading config may be slow
        with self._lock:
            if self._trust is None:
                self._trust = policy
            return self._trust

    @property
    def audit(self) -> AuditTrail:
        """Where provider calls are recorded (built from the config on first use)."""
        trail = self._audit
        if trail is not None:
            return trail
        built = AuditTrail.from_config(self.config)  # unlocked: loading config may be slow
        with self._lock:
            if self._audit is None:
                self._audit = built
            return self._audit

    def _context(self) -> Mapping[str, str]:
        """The config's encryption context, checked (once: the config is immutable)."""
        ctx = self._default_context
        if ctx is None:
            ctx = self._default_context = validate_context(self.config.context)
        return ctx

    def key_allowed(self, uri: str) -> bool:
        """Whether ``uri`` may be opened through a provider to unwrap (see the class)."""
        return self.trust.allows(uri, self.open_key)

    # -- recipients -------------------------------------------------------------------------

    def open_key(self, uri: str) -> KeyEncryptionKey:
        """Open (or reuse) the KEK named by ``uri`` through its provider."""
        return self._cache.get_or_add(uri, lambda: self._open(uri))  # a failed open: not cached

    def open_fresh(self, uri: str) -> KeyEncryptionKey:
        """A new, uncached KEK instance for ``uri`` (used to verify freshly wrapped keys)."""
        return self._open(uri)

    def _open(self, uri: str) -> KeyEncryptionKey:
        """Open ``uri`` through its provider with the configured settings (subclasses that
        override ``open_key``/``open_fresh`` rely on this one not being overridden)."""
        try:
            scheme = scheme_of(uri)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return self.registry.open(uri, self.config.provider_settings(scheme))

    def _resolve(self, to: Iterable[Recipient] | None) -> list[KeyEncryptionKey]:
        if (type(to) is list or type(to) is tuple) and len(to) == 1:
            only = to[0]
            if not isinstance(only, str):  # one KEK object: nothing to open, name or dedupe
                return [only]
        if to is None:
            targets: list[Recipient] = list(self.config.recipients)
            if not targets:
                raise ConfigError(
                    "no recipients: pass at least one key URI (--to) or set 'recipients' in the "
                    "config file"
                )
        else:
            if isinstance(to, str | bytes):
                raise TypeError("'to' must be a list of key URIs or KEKs, not a single string")
            targets = list(to)
            if not targets:
                raise ConfigError("no recipients: pass at least one key URI or KEK")
        unique: list[Recipient] = []
        for t in targets:  # --to X --to X: one recipient, not two identical stanzas
            if not any(t is u or (isinstance(t, str) and t == u) for u in unique):
                unique.append(t)
        trust = self.trust
        keks = []
        for t in unique:
            if isinstance(t, str):
                keks.append(self.open_key(t))
                trust.name(t)  # a key this engine encrypts to may open what it wrapped
            else:
                keks.append(t)
        return keks

    def _wrap_one(
        self, kek: KeyEncryptionKey, dek: bytes, context: Mapping[str, str]
    ) -> WrappedKey:
        """``kek.wrap``, checked and recorded (one audit event, ``ok`` or ``error``)."""
        try:
            audit = self._audit
            if audit is None:
                audit = self.audit
            if audit.idle():  # nothing to record: no need to enter a block
                w = kek.wrap(dek, context)
                _check_wrapped(kek, w)
            else:
                with audit.call("wrap", kek.key_id, None, context):
                    w = kek.wrap(dek, context)
                    _check_wrapped(kek, w)
        except KmsEnvelopeError:
            raise
        except Exception as exc:
            raise ProviderError(f"{kek.key_id}: wrap failed: {_as_error(exc)}") from exc
        return w

    def _wrap_all(
        self, keks: Sequence[KeyEncryptionKey], dek: bytes, context: Mapping[str, str]
    ) -> list[WrappedKey]:
        """Wrap for every KEK; several recipients are wrapped concurrently (a KMS call each)."""
        if len(keks) == 1:
            return [self._wrap_one(keks[0], dek, context)]
        with ThreadPoolExecutor(max_workers=min(len(keks), MAX_WRAP_THREADS)) as pool:
            futures = [pool.submit(self._wrap_one, kek, dek, context) for kek in keks]
            wrapped = [f.result() for f in futures]  # the first failure, in recipient order
        # Two names of one key version (local:k and local:k/1, an alias and its ARN): one stanza.
        unique: dict[str, WrappedKey] = {}
        for w in wrapped:
            unique.setdefault(w.key_id, w)
        return list(unique.values())

    def _candidates(
        self, key_id: str, provider: str | None, keys: Sequence[KeyEncryptionKey]
    ) -> list[KeyEncryptionKey]:
        """The supplied KEKs to try for a recipient: those with its exact key id, then the
        others of its provider."""
        supplied = (*keys, *self._keys)
        exact = [k for k in supplied if k.key_id == key_id]
        if len(exact) == len(supplied):
            return exact
        same_scheme = [
            k for k in supplied if k not in exact and scheme_or_none(k.key_id) == provider
        ]
        return exact + same_scheme

    def _own_candidates(self, recipient: WrappedKey) -> tuple[KeyEncryptionKey, ...] | None:
        """What :meth:`_candidates` returns for ``recipient`` when no ``keys`` are passed and
        this engine's own ``keys`` hold its exact key id (then the registry is never asked);
        None otherwise. Computed once per key id of ``keys`` (a fixed, small set)."""
        own = self._own
        if own is None:
            own = {}
            for kek in self._keys:
                key_id = kek.key_id
                if key_id not in own:
                    scheme = scheme_or_none(key_id)
                    own[key_id] = (scheme, tuple(self._candidates(key_id, scheme, ())))
            self._own = own
        found = own.get(recipient.key_id)
        if found is None or found[0] != recipient.provider:
            return None
        return found[1]

    def _keks_for(
        self,
        recipient: WrappedKey,
        keys: Sequence[KeyEncryptionKey],
        failures: RecipientFailures,
    ) -> Iterator[KeyEncryptionKey]:
        """Supplied KEKs that may hold this recipient, then the registry's, opened lazily."""
        candidates = self._candidates(recipient.key_id, recipient.provider, keys)
        yield from candidates
        if any(k.key_id == recipient.key_id for k in candidates):
            return  # the exact key was supplied; another instance of it would fail the same way
        scheme = scheme_or_none(recipient.key_id)
        if scheme is not None:
            try:  # said before the trust check: "install the provider" is the more useful answer
                self.registry.factory_for(scheme)
            except UnknownSchemeError as exc:
                failures.skipped(str(exc))
                return
            if scheme not in self._settings_checked:
                schema = self.registry.schemas.get(scheme)
                if schema is not None:  # the user's own settings: a mistake is a ConfigError
                    schema.parse(self.config.provider_settings(scheme))
                self._settings_checked.add(scheme)  # the config is immutable: once is enough
        if not self.key_allowed(recipient.key_id):
            failures.skipped(f"{recipient.key_id}: {self.trust.refusal(recipient.key_id)}")
            return
        try:
            kek = self.open_key(recipient.key_id)
        except Exception as exc:  # bad settings, keystore missing, key gone, plugin bug
            failures.failed(_as_error(exc))
            return
        yield kek

    def unwrap_data_key(self, header: Header, keys: Sequence[KeyEncryptionKey] = ()) -> bytes:
        """The envelope's DEK, from the first recipient that unwraps, checked by the header MAC.

        Raises ``NoRecipientError`` (every recipient and why) or ``AuthenticationError``.
        """
        return self._open_dek(header, keys)[0]

    def _open_dek(
        self, header: Header, keys: Sequence[KeyEncryptionKey]
    ) -> tuple[bytes, tuple[bytes, bytes]]:
        """``(dek, (payload_key, mac_key))`` from the first recipient that unwraps."""
        return self._unwrap(
            header.recipients,
            header.nonce,
            header.context,
            header.authenticated_bytes(),
            header.mac,
            keys,
        )

    def _unwrap(
        self,
        recipients: Sequence[WrappedKey],
        nonce: bytes,
        context: Mapping[str, str],
        authenticated: bytes,
        mac: bytes,
        keys: Sequence[KeyEncryptionKey],
        size: int | None = None,
        own: tuple[KeyEncryptionKey, ...] | None = (),
    ) -> tuple[bytes, tuple[bytes, bytes]]:
        """``(dek, (payload_key, mac_key))`` from the first recipient that unwraps, checked by
        the header MAC (over ``authenticated``, the header as received). ``own``: what
        :meth:`_own_candidates` returns for the first recipient, if the caller knows it
        (``()``, which it never returns, means: look it up).

        With a data-key cache and ``size`` (the plaintext length of an in-memory envelope), a
        data key that the same KEK unwrapped before from the same stanza under the same
        context is used without a provider call -- looked up only for a KEK that would have
        been called (supplied, or allowed by the trust policy), and checked by the MAC all
        the same; a key is cached only once it has authenticated a header.
        """
        cache = None if size is None else self.data_key_cache
        # The usual case first: the first recipient's exact key is one of this engine's own
        # KEKs. Its first candidate is tried here, without the bookkeeping of _unwrap_rest; if
        # it fails, _unwrap_rest records that attempt and goes on from the next candidate.
        if keys or not recipients:
            own = None
        elif own == ():
            own = self._own_candidates(recipients[0])
        tried: Exception | None = None  # what the first attempt raised, if it was made here
        limit = self._attempt_limit
        if limit is None:
            limit = self.max_unwrap_attempts
        if own is not None and (cache is not None or limit >= 1):
            kek, first = own[0], recipients[0]
            if cache is not None:
                dek = cache.opened_key(kek, first, context, size or 0)
                if dek is not None:
                    return dek, _derive_checked(dek, nonce, authenticated, mac)
            if limit >= 1:
                try:  # recorded before the data key is used; an unrecorded one is dropped
                    dek = self._unwrap_one(kek, first, context)
                except AuditSinkError:
                    raise
                except Exception as exc:
                    tried = exc
                else:
                    derived = _derive_checked(dek, nonce, authenticated, mac)
                    if cache is not None:
                        cache.keep_opened(kek, first, context, size or 0, dek)
                    return dek, derived
        return self._unwrap_rest(
            recipients, nonce, context, authenticated, mac, keys, size, own, tried
        )

    def _unwrap_one(
        self, kek: KeyEncryptionKey, wrapped: WrappedKey, context: Mapping[str, str]
    ) -> bytes:
        """``kek.unwrap``, checked and recorded (one audit event, ``ok`` or ``error``)."""
        audit = self._audit
        if audit is None:
            audit = self.audit
        if audit.idle():  # nothing to record: no need to enter a block
            dek = kek.unwrap(wrapped, context)
            if type(dek) is bytes and len(dek) == DEK_SIZE:
                return dek
            return _checked_dek(dek)
        with audit.call("unwrap", kek.key_id, None, context):
            return _checked_dek(kek.unwrap(wrapped, context))

    def _unwrap_rest(
        self,
        recipients: Sequence[WrappedKey],
        nonce: bytes,
        context: Mapping[str, str],
        authenticated: bytes,
        mac: bytes,
        keys: Sequence[KeyEncryptionKey],
        size: int | None,
        own: tuple[KeyEncryptionKey, ...] | None,
        tried: Exception | None,
    ) -> tuple[bytes, tuple[bytes, bytes]]:
        """:meth:`_unwrap` after its first attempt: ``tried`` is what that attempt (with
        ``own[0]`` for the first recipient) raised, or None if it was not made."""
        cache, plain = (None, 0) if size is None else (self.data_key_cache, size)
        attempts = UnwrapAttempts(self.max_unwrap_attempts)
        for index, recipient in enumerate(recipients):
            failures = attempts.recipient(recipient.key_id)
            candidates: Iterable[KeyEncryptionKey]
            if index == 0 and tried is not None:
                attempts.spend(failures)  # the attempt made before
                failures.failed(_as_error(tried))
                candidates = own[1:] if own is not None else ()
            else:
                mine = None if keys else self._own_candidates(recipient)
                candidates = self._keks_for(recipient, keys, failures) if mine is None else mine
            for kek in candidates:
                if cache is not None:
                    dek = cache.opened_key(kek, recipient, context, plain)
                    if dek is not None:
                        return dek, _derive_checked(dek, nonce, authenticated, mac)
                if not attempts.spend(failures):
                    break
                try:  # recorded before the data key is used; an unrecorded one is dropped
                    dek = self._unwrap_one(kek, recipient, context)
                except AuditSinkError:
                    raise
                except Exception as exc:
                    failures.failed(_as_error(exc))
                    continue
                derived = _derive_checked(dek, nonce, authenticated, mac)
                if cache is not None:
                    cache.keep_opened(kek, recipient, context, plain, dek)
                return dek, derived
        raise attempts.no_recipient()

    # -- encryption -------------------------------------------------------------------------

    def _start(
        self,
        to: Iterable[Recipient] | None,
        context: Mapping[str, str] | None,
        chunk_size: int | None,
        cacheable_size: int | None = None,
    ) -> tuple[bytes, bytes, int]:
        """Wrap a fresh DEK; return ``(header_bytes, payload_key, chunk_size)``.

        With a data-key cache and ``cacheable_size`` (the plaintext length of an in-memory
        message), the DEK and its wrapped copies may come from the cache; the header nonce,
        hence the payload and MAC keys, are fresh for every envelope regardless.
        """
        if chunk_size is None:
            size = DEFAULT_CHUNK_SIZE
        else:
            check_chunk_size(chunk_size)
            size = chunk_size
        ctx = self._context() if context is None else validate_context(context)
        keks = self._resolve(to)
        secret = os.urandom(DEK_SIZE + NONCE_SIZE)  # one call for the DEK and the nonce
        dek, nonce = secret[:DEK_SIZE], secret[DEK_SIZE:]
        cache = self.data_key_cache
        wrapped: Sequence[WrappedKey]
        if cache is not None and cacheable_size is not None:
            fresh = dek
            dek, wrapped = cache.data_key(
                keks, ctx, cacheable_size, lambda: (fresh, self._wrap_all(keks, fresh, ctx))
            )
        elif len(keks) == 1:
            wrapped = (self._wrap_one(keks[0], dek, ctx),)
        else:
            wrapped = self._wrap_all(keks, dek, ctx)
        authenticated = encode_new_header(size, nonce, ctx, wrapped)
        payload_key, mac_key = derive_keys(dek, nonce)
        return authenticated + hmac_sha256(mac_key, authenticated), payload_key, size

    def encrypt(
        self,
        data: bytes | bytearray | memoryview,
        to: Iterable[Recipient] | None = None,
        context: Mapping[str, str] | None = None,
        *,
        armor: bool = False,
        chunk_size: int | None = None,
    ) -> bytes:
        """Encrypt ``data`` for every recipient in ``to``; return the envelope."""
        audit = self._audit
        if (
            (type(to) is list or type(to) is tuple)
            and len(to) == 1
            and chunk_size is None
            and self.data_key_cache is None
            and len(data) <= DEFAULT_CHUNK_SIZE
            and not armor
            and not isinstance(to[0], str)
            and audit is not None
            and audit.idle()
        ):
            # The usual small message to one KEK object, nothing to record, no cache: _start,
            # _wrap_one and encrypt_bytes written out (each line as there), as it runs per message.
            kek = to[0]
            if context is not None:
                ctx = validate_context(context)
            else:
                ctx = self._default_context or self._context()
            secret = os.urandom(DEK_SIZE + NONCE_SIZE)
            dek, nonce = secret[:DEK_SIZE], secret[DEK_SIZE:]
            try:
                w = kek.wrap(dek, ctx)
                if type(w) is not WrappedKey or _SOUND_KEY_IDS.get(w.key_id) != w.provider:
                    _check_wrapped(kek, w)
            except KmsEnvelopeError:
                raise
            except Exception as exc:
                raise ProviderError(f"{kek.key_id}: wrap failed: {_as_error(exc)}") from exc
            authenticated = encode_new_header(DEFAULT_CHUNK_SIZE, nonce, ctx, (w,))
            payload_key, mac_key = derive_keys(dek, nonce)
            return b"".join(
                (
                    authenticated,
                    hmac_sha256(mac_key, authenticated),
                    AESGCM(payload_key).encrypt(SINGLE_FINAL_NONCE, data, None),
                )
            )
        header, payload_key, size = self._start(to, context, chunk_size, len(data))
        binary = header + encrypt_bytes(data, payload_key, size)
        return to_compact(binary) + b"\n" if armor else binary

    def encrypt_stream(
        self,
        src: BinaryIO,
        dst: BinaryIO,
        to: Iterable[Recipient] | None = None,
        context: Mapping[str, str] | None = None,
        *,
        armor: bool = False,
        chunk_size: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Encrypt ``src`` into ``dst`` in constant memory; return the plaintext length."""
        header, payload_key, size = self._start(to, context, chunk_size)
        sink: Any = ArmorWriter(dst) if armor else dst
        sink.write(header)
        total = encrypt_payload(src, sink, payload_key, size, progress)
        if armor:
            sink.finish()
        return total

    # -- decryption -------------------------------------------------------------------------

    def decrypt(
        self,
        blob: bytes | bytearray | memoryview | str,
        context: Mapping[str, str] | None = None,
        *,
        keys: Sequence[KeyEncryptionKey] = (),
    ) -> bytes:
        """Authenticate and decrypt an envelope (binary or compact) held in memory."""
        if type(blob) is bytes and not keys:  # the usual case first: a header seen before
            known = self._known.last
            if (
                known is None
                or not blob.startswith(known.prefix)
                or not blob.startswith(known.middle, NONCE_END)
                or len(blob) < known.size
                or known.limits is not self.limits
            ):
                known = self._known.find(blob, self.limits)
            if known is not None:
                # The header has a layout parsed before (known_headers.py): its nonce and
                # wrapped key are read in place, everything else is ``known``'s. The usual
                # case (this engine's own KEK, no data-key cache, nothing to record) is
                # written out here, as it runs per message; anything else goes to _unwrap.
                ctx = known.context
                if context:
                    check_context(ctx, context)
                end = known.end
                wrapped: WrappedKey = _new(WrappedKey)  # checked_wrapped_key, written out
                _set_provider(wrapped, known.provider)
                _set_key_id(wrapped, known.key_id)
                _set_algorithm(wrapped, known.algorithm)
                _set_ciphertext(wrapped, blob[known.wrapped_at : end])
                _set_params(wrapped, NO_PARAMS)
                nonce = blob[NONCE_AT:NONCE_END]
                authenticated = blob[:end]
                mac = blob[end : end + MAC_SIZE]
                # A small payload is copied (cheaper than a memoryview); a large one read in place.
                size = known.size
                payload = (
                    blob[size:] if len(blob) - size <= SMALL_PAYLOAD else memoryview(blob)[size:]
                )
                chunk_size = known.chunk_size
                own = known.own
                limit = self._attempt_limit
                audit = self._audit
                if (
                    own is None
                    or self.data_key_cache is not None
                    or limit is None
                    or limit < 1
                    or audit is None
                    or not audit.idle()
                ):
                    plain = (
                        None
                        if self.data_key_cache is None
                        else payload_length(len(payload), chunk_size)
                    )
                    _dek, (payload_key, _mac_key) = self._unwrap(
                        (wrapped,), nonce, ctx, authenticated, mac, (), plain, own
                    )
                else:  # _unwrap's first attempt, with nothing to record
                    kek = own[0]
                    try:
                        dek = kek.unwrap(wrapped, ctx)
                        if type(dek) is not bytes or len(dek) != DEK_SIZE:
                            dek = _checked_dek(dek)
                    except AuditSinkError:  # a KEK's own audit log failed: as in _unwrap
                        raise
                    except Exception as exc:  # the others, and this error, as _unwrap does
                        _dek, (payload_key, _mac_key) = self._unwrap_rest(
                            (wrapped,), nonce, ctx, authenticated, mac, (), None, own, exc
                        )
                    else:
                        payload_key, mac_key = derive_keys(dek, nonce)
                        if not hmac.compare_digest(hmac_sha256(mac_key, authenticated), mac):
                            raise AuthenticationError()
                if TAG_SIZE <= len(payload) <= chunk_size + TAG_SIZE:  # one chunk, the last
                    try:
                        return AESGCM(payload_key).decrypt(SINGLE_FINAL_NONCE, payload, None)
                    except InvalidTag:
                        raise AuthenticationError() from None
                return decrypt_bytes(payload, payload_key, chunk_size)
        return self._decrypt_parsing(blob, context, keys)

    def _decrypt_parsing(
        self,
        blob: bytes | bytearray | memoryview | str,
        context: Mapping[str, str] | None,
        keys: Sequence[KeyEncryptionKey],
    ) -> bytes:
        """:meth:`decrypt` of an envelope whose header is parsed (its layout then learnt)."""
        if type(blob) is bytes and blob.startswith(MAGIC):
            raw = blob
        elif isinstance(blob, str):
            raw = from_compact(blob)
        else:
            raw = bytes(blob)
            if not raw.startswith(MAGIC) and raw.lstrip(WHITESPACE).startswith(COMPACT_PREFIX):
                raw = from_compact(raw)
        chunk_size, nonce, ctx, recipients, mac, authenticated, size = header_fields(
            raw, self.limits
        )
        if len(recipients) == 1 and not keys:  # the next one like it needs no parsing
            self._known.learn(
                raw,
                size - MAC_SIZE,
                chunk_size,
                ctx,
                recipients[0],
                self._own_candidates(recipients[0]),
                self.limits,
            )
        if context:
            check_context(ctx, context)
        payload = memoryview(raw)[size:]
        # The plaintext length, for the data-key cache's byte limit (None: not a valid payload
        # length, so the envelope will not authenticate: the cache is not used for it).
        plain = None if self.data_key_cache is None else payload_length(len(payload), chunk_size)
        _dek, (payload_key, _mac_key) = self._unwrap(
            recipients, nonce, ctx, authenticated, mac, keys, plain
        )
        return decrypt_bytes(payload, payload_key, chunk_size)

    def decrypt_stream(
        self,
        src: BinaryIO,
        dst: BinaryIO,
        context: Mapping[str, str] | None = None,
        *,
        keys: Sequence[KeyEncryptionKey] = (),
        progress: Progress | None = None,
    ) -> int:
        """Authenticate and decrypt ``src`` into ``dst`` chunk by chunk.

        Only authenticated chunks are written, but on error ``dst`` may hold a prefix of the
        plaintext: write to a temporary file and discard it on error (the CLI does).
        """
        reader, encoding = open_envelope_stream(src)
        if encoding == "compact":
            # Invalid compact text is malformed, and malformed checks that need no key come
            # before any provider call (docs/format.md section 10): decode it all first.
            with spool_compact(reader) as binary:
                return self._decrypt_binary(binary, dst, context, keys, progress)
        if type(src) is io.BytesIO and isinstance(reader, PrefixedReader):
            return self._decrypt_binary(reader, dst, context, keys, progress, payload_src=src)
        return self._decrypt_binary(reader, dst, context, keys, progress)

    def _decrypt_binary(
        self,
        reader: BinaryIO,
        dst: BinaryIO,
        context: Mapping[str, str] | None,
        keys: Sequence[KeyEncryptionKey],
        progress: Progress | None,
        payload_src: BinaryIO | None = None,
    ) -> int:
        header, _size = read_header(reader, self.limits)
        check_context(header.context, context)
        _dek, (payload_key, _mac_key) = self._open_dek(header, keys)
        # For a BytesIO the header (> 8 bytes) has used up the reader's lookahead: read the
        # payload in place from the BytesIO (no copy) rather than through the wrapper.
        src = reader if payload_src is None else payload_src
        return decrypt_payload(src, dst, payload_key, header.chunk_size, progress)

    def inspect(
        self, blob_or_file: bytes | bytearray | memoryview | str | BinaryIO
    ) -> EnvelopeInfo:
        """Read an envelope's header without any key."""
        return inspect_envelope(blob_or_file, self.limits)


# Key ids that passed _check_wrapped, with their provider (bounded: emptied when full).
_SOUND_KEY_IDS: dict[str, str] = {}


def _check_wrapped(kek: KeyEncryptionKey, w: object) -> None:
    """``ProviderError`` unless ``w`` is a ``WrappedKey`` whose key id starts with its provider."""
    if type(w) is WrappedKey and scheme_or_none(w.key_id) == w.provider:
        if len(_SOUND_KEY_IDS) >= 1024:
            _SOUND_KEY_IDS.clear()
        _SOUND_KEY_IDS[w.key_id] = w.provider
        return  # the usual case, checked first
    if not isinstance(w, WrappedKey):
        raise ProviderError(f"{kek.key_id}: wrap returned {type(w).__name__}, not WrappedKey")
    if scheme_or_none(w.key_id) != w.provider:
        raise ProviderError(
            f"{kek.key_id}: wrap returned key id {w.key_id!r} that does not start with "
            f"its provider {w.provider!r}"
        )


def _derive_checked(
    dek: bytes, nonce: bytes, authenticated: bytes, mac: bytes
) -> tuple[bytes, bytes]:
    """``(payload_key, mac_key)`` of ``dek`` if its MAC key authenticates the header (the
    ``authenticated`` bytes and their ``mac``); ``AuthenticationError`` otherwise."""
    derived = derive_keys(dek, nonce)
    if not hmac.compare_digest(hmac_sha256(derived[1], authenticated), mac):
        raise AuthenticationError()
    return derived


def _checked_dek(dek: object) -> bytes:
    """What ``unwrap`` returned, as a data key; ``ProviderError`` if it is not one."""
    if type(dek) is bytes and len(dek) == DEK_SIZE:
        return dek
    if not isinstance(dek, bytes | bytearray) or len(dek) != DEK_SIZE:
        raise ProviderError("provider returned a data key of the wrong size")
    return bytes(dek)


def check_context(envelope: Mapping[str, str], expected: Mapping[str, str] | None) -> None:
    """Every key the caller expects must be in the envelope's context with the same value."""
    if not expected:
        return
    for key, value in validate_context(expected).items():
        actual = envelope.get(key)
        if actual is None or not _equal(actual, value):
            raise AuthenticationError(
                f"envelope did not authenticate: encryption context key {key!r} does not match"
            )


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
