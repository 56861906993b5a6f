"""Provider-call discipline for bulk jobs: a concurrency bound and an optional rate limit per
provider, and retries of transient failures with exponential backoff, full jitter and
``Retry-After``."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..config import Config
from ..engine import KEK_CACHE_SIZE, Engine
from ..errors import ProviderUnavailableError
from ..kek import KeyEncryptionKey, RotatableKey, ServiceRewrapKey, WrappedKey, scheme_of
from ..plugins import ProviderRegistry
from ..trust import LruCache

__all__ = ["CallPolicy", "GuardedEngine", "JobCancelled", "RateLimiter"]

T = TypeVar("T")


class JobCancelled(BaseException):
    """Raised in a worker thread at its next provider call once the job is stopping (Ctrl-C).

    A ``BaseException``, so that the engine's handling of provider failures never mistakes it
    for a key that failed: the envelope is left as it was and is not journaled (a resumed job
    does it again).
    """


class RateLimiter:
    """A token bucket: at most ``rate`` calls per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, cancelled: threading.Event | None = None) -> None:
        """Take one token, waiting for it; ``JobCancelled`` at once if ``cancelled`` is set."""
        while True:
            if cancelled is not None and cancelled.is_set():
                raise JobCancelled()
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.rate
            if cancelled is None:
                time.sleep(wait)
            elif cancelled.wait(wait):
                raise JobCancelled()


@dataclass
class CallPolicy:
    """How provider calls are bounded and retried during a bulk job."""

    per_provider: int = 16
    rate_limits: Mapping[str, float] = field(default_factory=dict)
    retries: int = 8
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    sleep: Callable[[float], None] | None = None
    """How to wait between retries (default: a wait that :meth:`cancel` cuts short)."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._limiters = {s: RateLimiter(r) for s, r in self.rate_limits.items()}
        self.retried = 0

    def _slot(self, scheme: str) -> threading.BoundedSemaphore:
        with self._lock:
            slot = self._slots.get(scheme)
            if slot is None:
                slot = self._slots[scheme] = threading.BoundedSemaphore(self.per_provider)
            return slot

    def cancel(self) -> None:
        """Stop the job: waits (rate limit, backoff) end at once and every later call raises
        ``JobCancelled`` instead of reaching the provider. Calls already at the provider finish."""
        self._cancelled.set()

    def reset(self) -> None:
        """Allow calls again after :meth:`cancel` (the next job may reuse this policy)."""
        self._cancelled.clear()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _pause(self, seconds: float) -> None:
        if self.sleep is not None:
            self.sleep(seconds)
        elif self._cancelled.wait(seconds):
            raise JobCancelled()

    def delay(self, attempt: int, error: ProviderUnavailableError) -> float:
        """Full-jitter exponential backoff, never shorter than the service's Retry-After."""
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        jittered = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
        hint = getattr(error, "retry_after", None)
        return max(jittered, min(float(hint), self.backoff_max)) if hint else jittered

    def call(self, scheme: str, fn: Callable[[], T]) -> T:
        limiter = self._limiters.get(scheme)
        for attempt in range(self.retries + 1):
            if self._cancelled.is_set():
                raise JobCancelled()
            try:
                with self._slot(scheme):
                    if limiter is not None:
                        limiter.acquire(self._cancelled)
                    elif self._cancelled.is_set():
                        raise JobCancelled()  # waited for a slot while the job was stopped
                    return fn()
            except ProviderUnavailableError as exc:  # throttled, 5xx, timeouts
                if attempt == self.retries:
                    raise
                with self._lock:
                    self.retried += 1
                self._pause(self.delay(attempt, exc))
        raise AssertionError("unreachable")


class _GuardedKEK:
    """A KEK whose calls go through a :class:`CallPolicy`."""

    def __init__(self, inner: KeyEncryptionKey, policy: CallPolicy) -> None:
        self._inner = inner
        self._policy = policy
        self._scheme = scheme_of(inner.key_id)

    @property
    def key_id(self) -> str:
        return self._inner.key_id

    def __repr__(self) -> str:
        return f"Guarded({self._inner!r})"

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        return self._policy.call(self._scheme, lambda: self._inner.wrap(dek, context))

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        return self._policy.call(self._scheme, lambda: self._inner.unwrap(wrapped, context))

    def latest(self) -> KeyEncryptionKey:
        if isinstance(self._inner, RotatableKey):
            return _GuardedKEK(self._inner.latest(), self._policy)
        return self

    def rewrap_latest(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey | None:
        inner = self._inner
        if not isinstance(inner, ServiceRewrapKey):
            return None
        return self._policy.call(self._scheme, lambda: inner.rewrap_latest(wrapped, context))


class GuardedEngine(Engine):
    """An :class:`Engine` whose provider KEKs are wrapped in a :class:`CallPolicy`."""

    def __init__(
        self,
        policy: CallPolicy,
        *,
        registry: ProviderRegistry | None = None,
        config: Config | None = None,
        keys: Sequence[KeyEncryptionKey] = (),
        allowed_keys: Sequence[str] | None = None,
        allow: Sequence[str] = (),
        trusted_keys: Sequence[str] = (),
        max_unwrap_attempts: int | None = None,
    ) -> None:
        super().__init__(
            registry=registry,
            config=config,
            keys=keys,
            allowed_keys=allowed_keys,
            allow=allow,
            trusted_keys=trusted_keys,
            max_unwrap_attempts=max_unwrap_attempts,
        )
        self._init_guard(policy)

    @classmethod
    def around(cls, engine: Engine, policy: CallPolicy) -> GuardedEngine:
        """``engine`` itself -- registry, configuration, trust settings (``allow``, named keys,
        ``allowed_keys``), supplied KEKs, limits -- with its provider calls bounded by ``policy``.

        The CLI uses this so a job trusts exactly what the command line's engine trusts.
        """
        guarded = cls.__new__(cls)
        guarded.__dict__.update(vars(engine))  # shares the opened-KEK cache, which is thread-safe
        guarded._init_guard(policy)
        return guarded

    def _init_guard(self, policy: CallPolicy) -> None:
        self.policy = policy
        self._guarded: LruCache[KeyEncryptionKey] = LruCache(KEK_CACHE_SIZE)

    def open_key(self, uri: str) -> KeyEncryptionKey:
        found = self._guarded.get(uri)
        if found is not None:
            return found
        return self._guarded.setdefault(uri, _GuardedKEK(super().open_key(uri), self.policy))

    def open_fresh(self, uri: str) -> KeyEncryptionKey:
        return _GuardedKEK(super().open_fresh(uri), self.policy)
