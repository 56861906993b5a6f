"""CRC32C integrity checks on every Cloud KMS request and response, as Google asks.

Requests carry the CRC32C of what they send (``plaintext_crc32c``,
``additional_authenticated_data_crc32c``, ``ciphertext_crc32c``); the service refuses a request
whose data does not match. Responses carry the CRC32C of what they return and say whether they
checked ours (``verified_*_crc32c``); any mismatch or missing check is an
:class:`IntegrityError` here, never accepted silently.
"""

from __future__ import annotations

import google_crc32c

from kmsenvelope.errors import ProviderError

__all__ = ["IntegrityError", "check_crc", "check_verified", "crc32c"]


class IntegrityError(ProviderError):
    """A Cloud KMS response failed its CRC32C check (corrupted between the service and us)."""


def crc32c(data: bytes) -> int:
    """The CRC32C of ``data`` (Castagnoli), as Cloud KMS computes it."""
    return int(google_crc32c.value(bytes(data)))


def check_crc(where: str, field: str, data: bytes, reported: int | None) -> None:
    """``reported`` (the response's ``FIELD_crc32c``) must be the CRC32C of ``data``."""
    if reported is None:
        raise IntegrityError(f"{where}: the response has no {field}_crc32c; refusing it unchecked")
    if int(reported) != crc32c(data):
        raise IntegrityError(
            f"{where}: the response's {field} does not match its {field}_crc32c: it was "
            "corrupted on the way; refusing it (retry)"
        )


def check_verified(where: str, field: str, verified: bool) -> None:
    """The response must say that the service verified the request's ``FIELD_crc32c``."""
    if not verified:
        raise IntegrityError(
            f"{where}: the service did not confirm the request's {field}_crc32c "
            f"(verified_{field}_crc32c is false); the request may have been corrupted on the "
            "way, refusing the response"
        )
