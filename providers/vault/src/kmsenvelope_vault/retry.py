"""Bounded retries through the HTTP stack hvac uses: a urllib3 ``Retry`` on the requests session.

* Retried: connection failures, and the statuses Vault answers when trying again may work --
  412 (a performance standby not yet up to date), 429 (rate limited), 500, 502, 503 (sealed,
  standby, maintenance) and 504.
* ``POST`` is retried too: Transit's encrypt, decrypt and rewrap change nothing on the server, so
  repeating one is safe (urllib3 retries only idempotent methods by default).
* ``Retry-After`` is honoured but capped at ``retry_backoff_max`` seconds; backoff is
  exponential with jitter, so many workers throttled together do not retry in lockstep.
* After the last try the final response is handed back (``raise_on_status=False``), and hvac
  turns it into its exception, which :mod:`kmsenvelope_vault.errors` maps.
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3 import BaseHTTPResponse
from urllib3.util.retry import Retry

from .settings import VaultSettings

__all__ = ["RETRIED_STATUSES", "BoundedRetry", "mount_retries"]

RETRIED_STATUSES = frozenset({412, 429, 500, 502, 503, 504})


class BoundedRetry(Retry):
    """urllib3 ``Retry`` whose ``Retry-After`` wait never exceeds ``backoff_max``."""

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        """The server's ``Retry-After``, capped at ``backoff_max``."""
        retry_after = super().get_retry_after(response)
        if retry_after is None:
            return None
        return max(0.0, min(float(retry_after), float(self.backoff_max)))

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> BoundedRetry:
        """The policy the ``retry_*`` settings ask for."""
        total = settings.retry_total
        return cls(
            total=total,
            connect=min(2, total),
            read=min(2, total),
            status=total,
            other=0,
            redirect=0,
            allowed_methods=None,  # every method, POST included (see the module doc)
            status_forcelist=RETRIED_STATUSES,
            backoff_factor=settings.retry_backoff_factor,
            backoff_max=settings.retry_backoff_max,
            backoff_jitter=settings.retry_backoff_factor,
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
        )


def mount_retries(session: requests.Session, settings: VaultSettings) -> None:
    """Make ``session`` retry as the settings ask, for https and (loopback) http alike."""
    adapter = HTTPAdapter(max_retries=BoundedRetry.from_settings(settings))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
