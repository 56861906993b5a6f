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
from ..engine import Engine
from ..errors import ProviderUnavailableError
from ..kek import KeyEncryptionKey, RotatableKey, WrappedKey, scheme_of
from ..plugins import ProviderRegistry

__all__ = ["CallPolicy", "GuardedEngine", "RateLimiter"]

T = TypeVar("T")


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

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.rate
            time.sleep(wait)


@dataclass
class CallPolicy:
    """How provider calls are bounded and retried during a bulk job."""

    per_provider: int = 16
    rate_limits: Mapping[str, float] = field(default_factory=dict)
    retries: int = 8
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._limiters = {s: RateLimiter(r) for s, r in self.rate_limits.items()}
        self.retried = 0

    def _slot(self, scheme: str) -> threading.BoundedSemaphore:
        with self._lock:
            slot = self._slots.get(scheme)
            if slot is None:
                slot = self._slots[scheme] = threading.BoundedSemaphore(self.per_provider)
            return slot

    def delay(self, attempt: int, error: ProviderUnavailableError) -> float:
        """Full-jitter exponential backoff, never shorter than the service's Retry-After."""
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        jittered = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
        hint = getattr(error, "retry_after", None)
        return max(jittered, min(float(hint), self.backoff_max)) if hint else jittered

    def call(self, scheme: str, fn: Callable[[], T]) -> T:
        limiter = self._limiters.get(scheme)
        for attempt in range(self.retries + 1):
            try:
                with self._slot(scheme):
                    if limiter is not None:
                        limiter.acquire()
                    return fn()
            except ProviderUnavailableError as exc:  # throttled, 5xx, timeouts
                if attempt == self.retries:
                    raise
                with self._lock:
                    self.retried += 1
                self.sleep(self.delay(attempt, exc))
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
    ) -> None:
        super().__init__(registry=registry, config=config, keys=keys, allowed_keys=allowed_keys)
        self.policy = policy
        self._guarded: dict[str, KeyEncryptionKey] = {}
        self._guard_lock = threading.Lock()

    def open_key(self, uri: str) -> KeyEncryptionKey:
        with self._guard_lock:
            found = self._guarded.get(uri)
        if found is not None:
            return found
        guarded = _GuardedKEK(super().open_key(uri), self.policy)
        with self._guard_lock:
            return self._guarded.setdefault(uri, guarded)

    def open_fresh(self, uri: str) -> KeyEncryptionKey:
        return _GuardedKEK(super().open_fresh(uri), self.policy)
