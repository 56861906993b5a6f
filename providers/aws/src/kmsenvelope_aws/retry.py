"""Bounded retries with exponential backoff and full jitter.

A call is made at most ``max_attempts`` times. Before retry ``n`` (1, 2, ...) the loop sleeps
``uniform(0, min(backoff_max, backoff_base * 2 ** (n - 1)))`` -- "full jitter", which spreads
the retries of many clients hitting the same throttled key. Only throttling and transient
failures are retried (see :func:`kmsenvelope_aws.error_mapping.classify`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import botocore.exceptions

from .error_mapping import Outcome, classify, error_code, to_library_error
from .settings import ProviderSettings

__all__ = ["RetryPolicy", "call_with_retries"]

T = TypeVar("T")
log = logging.getLogger("kmsenvelope_aws")
_random = secrets.SystemRandom()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry one KMS call."""

    max_attempts: int = 5
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def for_settings(cls, settings: ProviderSettings) -> RetryPolicy:
        """The policy the settings ask for."""
        return cls(settings.max_attempts, settings.backoff_base, settings.backoff_max)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (retry - 1)))
        return _random.uniform(0.0, ceiling)


def call_with_retries(policy: RetryPolicy, call: Callable[[], T], *, key: str, operation: str) -> T:
    """Run ``call``; retry throttling/transient failures; raise a kmsenvelope error at the end.

    Exceptions that are not boto3/botocore errors propagate unchanged.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            outcome = classify(exc)
            if outcome is Outcome.FATAL or attempt >= policy.max_attempts:
                if not _is_aws_error(exc):
                    raise  # our own bug, or a test double's assertion: not a KMS failure
                raise to_library_error(exc, key=key, operation=operation, attempts=attempt) from exc
            pause = policy.delay(attempt)
            log.debug(
                "%s: KMS %s %s (%s), attempt %d/%d, retrying in %.3fs",
                key,
                operation,
                outcome.value,
                error_code(exc),
                attempt,
                policy.max_attempts,
                pause,
            )
            policy.sleep(pause)


def _is_aws_error(exc: BaseException) -> bool:
    if isinstance(exc, AssertionError | botocore.exceptions.StubResponseError):
        return False  # botocore's Stubber saying the test queued the wrong responses
    return isinstance(exc, botocore.exceptions.ClientError | botocore.exceptions.BotoCoreError)
