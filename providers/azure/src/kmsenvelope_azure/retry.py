"""A bounded azure-core ``RetryPolicy`` for Key Vault calls.

azure-core already retries 408/429/5xx and honours ``Retry-After``; this subclass only bounds it
and fits it to wrap/unwrap:

* ``Retry-After`` is honoured but capped at ``retry_backoff_max`` seconds, and the whole call
  (tries plus sleeps) is limited by ``retry_timeout`` -- a throttling service never parks a
  caller for minutes;
* backoff gets jitter, so many workers throttled together do not retry in lockstep;
* ``POST`` is retried too: ``wrapkey``/``unwrapkey`` change nothing in the vault, so repeating
  one is safe (azure-core retries only idempotent methods by default).
"""

from __future__ import annotations

import random
from typing import Any

from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import RetryPolicy

from .settings import AzureSettings

__all__ = ["BoundedRetryPolicy", "retry_kwargs"]

_RETRIED_METHODS = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "POST"})
_jitter = random.SystemRandom()


def retry_kwargs(settings: AzureSettings) -> dict[str, Any]:
    """azure-core retry keywords for ``settings`` (also handed to azure-identity credentials)."""
    return {
        "retry_total": settings.retry_total,
        "retry_connect": min(2, settings.retry_total),
        "retry_read": min(2, settings.retry_total),
        "retry_status": settings.retry_total,
        "retry_backoff_factor": settings.retry_backoff_factor,
        "retry_backoff_max": settings.retry_backoff_max,
        "timeout": settings.retry_timeout,
    }


class BoundedRetryPolicy(RetryPolicy[Any, Any]):
    """``RetryPolicy`` with a capped ``Retry-After``, jittered backoff and retried ``POST``."""

    @classmethod
    def from_settings(cls, settings: AzureSettings) -> BoundedRetryPolicy:
        """The policy configured by the ``retry_*`` settings."""
        return cls(**retry_kwargs(settings))

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        settings = super().configure_retries(options)
        settings["methods"] = _RETRIED_METHODS
        return settings

    def get_retry_after(self, response: PipelineResponse[Any, Any]) -> float | None:
        retry_after = super().get_retry_after(response)
        if retry_after is None:
            return None
        return max(0.0, min(float(retry_after), float(self.backoff_max)))

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        backoff = super().get_backoff_time(settings)
        return backoff * _jitter.uniform(0.5, 1.0) if backoff > 0 else 0.0
