"""The retry policy of the ``az://`` store's client (imports azure-storage-blob: import it only
when such a store is opened).

azure-storage-blob's ``ExponentialRetry`` retries every ``AzureError``, including a credential
that could not get a token, and starts at 15 s: a user with no Azure sign-in would wait about a
minute to learn it, and an unreachable endpoint costs a minute and a half. This one gives up at
once on a credential failure, and retries throttling, 5xx and connection errors 3 times, after
about 1, 5 and 9 s (one second of jitter).
"""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import ClientAuthenticationError
from azure.storage.blob import ExponentialRetry

__all__ = ["StoreRetry"]


class StoreRetry(ExponentialRetry):
    """``ExponentialRetry`` (3 retries from 1 s) that never retries a credential failure."""

    def __init__(self) -> None:
        super().__init__(initial_backoff=1, increment_base=2, retry_total=3, random_jitter_range=1)

    def increment(
        self,
        settings: dict[str, Any],
        request: Any,
        response: Any = None,
        error: Any = None,
    ) -> bool:
        if isinstance(error, ClientAuthenticationError) and error.response is None:
            return False  # no token: retrying asks the same credential the same question
        return bool(super().increment(settings, request, response, error))
