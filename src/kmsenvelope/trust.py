"""Which keys an envelope may make us contact: allowed-key patterns, named keys, attempt caps,
and the bounded cache of keys once opened.

An envelope names the keys that wrapped it, and anyone can write an envelope. Decryption
therefore opens a key through its provider only when the *user* vouched for it:

- ``allowed_keys`` set (config, profile, ``KMSENVELOPE_ALLOWED_KEYS`` or
  ``Engine(allowed_keys=…)``): exactly the keys matching those patterns;
- otherwise (the default, "strict"): the keys the user named — configured recipients, keys
  named on the command line (``--to``, ``--add``), keys handed in code or used by the same engine
  to encrypt — any of their versions, and the local keystore's own keys (``local:``);
- in both cases, the extra patterns of ``--allow`` / ``Engine(allow=…)``.

Discovery (open whatever the envelope names) is the explicit opt-in ``SCHEME:*``.

However many recipients an envelope lists, it may cause at most ``max_unwrap_attempts``
provider unwrap calls (:class:`UnwrapAttempts`, which also records why each recipient failed),
and the keys an engine opens are kept in a bounded LRU (:class:`LruCache`, ``KEK_CACHE_SIZE``),
so that what envelopes name cannot grow memory without bound.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Generic, Protocol, TypeVar, runtime_checkable

from .config import MAX_UNWRAP_ATTEMPTS_RANGE, Config, check_allowed_keys
from .errors import ConfigError, KmsEnvelopeError, NoRecipientError, RecipientAttempt
from .kek import KeyEncryptionKey, scheme_of

__all__ = [
    "KEK_CACHE_SIZE",
    "KeyRecognizer",
    "LruCache",
    "RecipientFailures",
    "TrustPolicy",
    "TrustSettings",
    "UnwrapAttempts",
    "allow_hint",
    "names_version_of",
    "scheme_or_none",
]

ALWAYS_TRUSTED_SCHEMES = frozenset({"local"})
"""Providers whose every key is the user's own: the local keystore never leaves this host."""


@runtime_checkable
class KeyRecognizer(Protocol):
    """Optional KEK extension: does an envelope's recorded key id name this key?

    Used for keys whose recorded id differs from the name the user gave (an AWS alias is
    recorded as the key ARN it pointed at). It may ask this key's own service (the user named
    the key), never a service the recorded id names.
    """

    def recognizes(self, key_id: str) -> bool:
        """True if ``key_id`` (from a recipient stanza) is this key or one of its versions."""
        ...


_VERSION_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_HINTABLE = re.compile(r"[A-Za-z0-9._~:/@%+=;,-]+")  # no glob characters, no quotes or spaces
MAX_LEARNED_NAMES = 256  # keys an engine encrypted to, remembered as named (oldest forgotten)
KEK_CACHE_SIZE = 256  # opened KEKs kept per engine (LRU): bounded whatever envelopes name


def names_version_of(named: str, key_id: str) -> bool:
    """``key_id`` is ``named`` itself or one version segment below it (``local:k`` ->
    ``local:k/3``, an Azure key -> ``…/keys/k/0123abcd``); never a longer path."""
    if key_id == named:
        return True
    if not key_id.startswith(named + "/"):
        return False
    return _VERSION_SEGMENT.fullmatch(key_id[len(named) + 1 :]) is not None


def allow_hint(key_id: str) -> str:
    """How to allow ``key_id``, safe to paste into a shell: the exact id, quoted, only when it
    has no glob or shell-special characters (an envelope chose it: ``aws-kms:*`` must never be
    suggested as if it named one key)."""
    if _HINTABLE.fullmatch(key_id):
        return f"--allow {shlex.quote(key_id)}"
    return "--allow PATTERN"


_T = TypeVar("_T")


class LruCache(Generic[_T]):
    """A small thread-safe LRU map from key URI to an opened object (bounded memory)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an LRU cache needs a limit of at least 1")
        self._limit = limit
        self._items: OrderedDict[str, _T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> _T | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def get_or_add(self, key: str, make: Callable[[], _T]) -> _T:
        """The item stored for ``key``, else ``make()`` stored (called outside the lock: it may
        be slow; if it raises, nothing is stored)."""
        found = self.get(key)
        return found if found is not None else self.setdefault(key, make())

    def setdefault(self, key: str, item: _T) -> _T:
        """Store ``item`` unless ``key`` is present; return what is stored; evict the oldest."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
            self._items[key] = item
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
            return item

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class TrustPolicy:
    """Decides whether a recipient's key may be opened through its provider to unwrap."""

    def __init__(
        self,
        allowed_keys: Sequence[str] | None,
        allow: Sequence[str] = (),
        named: Iterable[str] = (),
    ) -> None:
        if isinstance(allow, str):
            raise TypeError("allow must be a list of key-URI patterns, not one string")
        self.allowed_keys = None if allowed_keys is None else tuple(allowed_keys)
        self.allow = check_allowed_keys(allow, source="allow") if allow else ()
        self._named: dict[str, None] = dict.fromkeys(named)  # named by the user: kept
        self._learned: OrderedDict[str, None] = OrderedDict()  # encrypted to: bounded
        self._lock = threading.Lock()

    @property
    def strict(self) -> bool:
        """No ``allowed_keys``: only named keys (plus ``allow`` patterns) may be contacted."""
        return self.allowed_keys is None

    @property
    def named(self) -> tuple[str, ...]:
        with self._lock:
            return (*self._named, *(u for u in self._learned if u not in self._named))

    def name(self, uri: str) -> None:
        """Record a key URI the user named by encrypting to it (the most recent are kept)."""
        with self._lock:
            if uri in self._named:
                return
            self._learned[uri] = None
            self._learned.move_to_end(uri)
            while len(self._learned) > MAX_LEARNED_NAMES:
                self._learned.popitem(last=False)

    def allows(self, key_id: str, open_named: Callable[[str], KeyEncryptionKey]) -> bool:
        """Whether the key recorded as ``key_id`` may be contacted.

        ``open_named`` opens a key the user named (safe: they chose it); it is used only for
        keys that implement :class:`KeyRecognizer`, such as an AWS alias.
        """
        if any(fnmatchcase(key_id, p) for p in self.allow):
            return True
        if not self.strict:
            return any(fnmatchcase(key_id, p) for p in self.allowed_keys or ())
        scheme = scheme_or_none(key_id)
        if scheme is None:
            return False
        if scheme in ALWAYS_TRUSTED_SCHEMES:
            return True
        same_scheme = [n for n in self.named if scheme_or_none(n) == scheme]
        if any(names_version_of(n, key_id) for n in same_scheme):
            return True
        for uri in same_scheme:
            try:
                kek = open_named(uri)
                if isinstance(kek, KeyRecognizer) and kek.recognizes(key_id):
                    return True
            except Exception:  # noqa: S112 - a named key that cannot be opened vouches for nothing
                continue
        return False

    def refusal(self, key_id: str) -> str:
        """Why ``key_id`` was skipped, and how to allow it (one line, for NoRecipientError)."""
        how = f"{allow_hint(key_id)}, allowed_keys or KMSENVELOPE_ALLOWED_KEYS"
        if not self.strict:
            listed = ", ".join((*(self.allowed_keys or ()), *self.allow))
            return (
                f"not in allowed_keys, so it was not contacted (allowed: {listed}; "
                f"to allow it: {how})"
            )
        return (
            "not a key you named (configured recipients, --to/--add keys) nor in allowed_keys, "
            f"so it was not contacted (to allow it: {how})"
        )


def scheme_or_none(uri: str) -> str | None:
    """The scheme of ``uri``, or None if it is not a key URI (an envelope may record anything)."""
    try:
        return scheme_of(uri)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """What the code making an ``Engine`` said about trust, checked at once; None (or empty)
    leaves the decision to the configuration, read when the policy is first needed."""

    allowed_keys: tuple[str, ...] | None = None
    allow: tuple[str, ...] = ()
    trusted_keys: tuple[str, ...] = ()
    max_unwrap_attempts: int | None = None

    @classmethod
    def checked(
        cls,
        allowed_keys: Sequence[str] | None,
        allow: Sequence[str],
        trusted_keys: Sequence[str],
        max_unwrap_attempts: int | None,
    ) -> TrustSettings:
        """Validate the ``Engine`` arguments (``TypeError`` for a wrong type, else
        ``ConfigError``) and keep them."""
        for name, value in (("allowed_keys", allowed_keys), ("allow", allow)):
            if isinstance(value, str):
                raise TypeError(f"{name} must be a list of key-URI patterns, not one string")
        if isinstance(trusted_keys, str):
            raise TypeError("trusted_keys must be a list of key URIs, not one string")
        allowed = None if allowed_keys is None else check_allowed_keys(allowed_keys)
        extra = check_allowed_keys(allow, source="allow") if allow else ()
        trusted = tuple(trusted_keys)
        for uri in trusted:
            try:
                scheme_of(uri)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        attempts = None if max_unwrap_attempts is None else _check_attempts(max_unwrap_attempts)
        return cls(allowed, extra, trusted, attempts)

    def policy(self, config: Config) -> TrustPolicy:
        """The policy these settings make together with ``config``."""
        return TrustPolicy(
            self.allowed_keys if self.allowed_keys is not None else config.allowed_keys,
            self.allow,
            (*config.recipients, *self.trusted_keys),
        )


def _check_attempts(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("max_unwrap_attempts must be an integer")
    low, high = MAX_UNWRAP_ATTEMPTS_RANGE
    if not low <= value <= high:
        raise ConfigError(f"max_unwrap_attempts must be {low}..{high}")
    return value


class RecipientFailures:
    """Why one recipient could not unwrap: every reason in order, and the last error a
    provider raised for it (None while no provider was called)."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self.reasons: list[str] = []
        self.error: KmsEnvelopeError | None = None

    def skipped(self, reason: str) -> None:
        """A key of this recipient was not called (not allowed, no provider, attempt cap)."""
        self.reasons.append(reason)

    def failed(self, error: KmsEnvelopeError) -> None:
        """A provider call for this recipient raised ``error``."""
        self.reasons.append(str(error))
        self.error = error

    def attempt(self) -> RecipientAttempt:
        """The record for ``NoRecipientError`` (providers usually prefix their messages with
        the key id: it is said once)."""
        prefix = f"{self.key_id}: "
        reason = "; ".join(r.removeprefix(prefix) for r in self.reasons)
        return RecipientAttempt(self.key_id, reason, self.error)


class UnwrapAttempts:
    """The provider unwrap calls one envelope causes: at most ``limit``
    (``max_unwrap_attempts``), and per recipient why it failed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._left = limit
        self._recipients: list[RecipientFailures] = []

    def recipient(self, key_id: str) -> RecipientFailures:
        """Start recording the next recipient of the envelope."""
        failures = RecipientFailures(key_id)
        self._recipients.append(failures)
        return failures

    def spend(self, failures: RecipientFailures) -> bool:
        """Take one call for this recipient; False (noted as its reason) once none is left."""
        if self._left <= 0:
            failures.skipped(
                f"not tried: this envelope already caused {self.limit} unwrap attempts "
                "(max_unwrap_attempts)"
            )
            return False
        self._left -= 1
        return True

    def no_recipient(self) -> NoRecipientError:
        """The error saying every recipient and why it failed."""
        return NoRecipientError([r.attempt() for r in self._recipients])
