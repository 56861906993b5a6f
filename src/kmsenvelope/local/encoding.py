"""How the keystore's JSON files write values: base64 for bytes, canonical JSON under a MAC, UTC
timestamps."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any

from ..errors import KeystoreCorruptError

__all__ = ["b64", "canonical", "now", "unb64"]


def b64(data: bytes) -> str:
    """``data`` as standard base64 text."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str) -> bytes:
    """The bytes of base64 ``text`` read from ``what`` (``KeystoreCorruptError`` if invalid)."""
    try:
        return base64.b64decode(str(text), validate=True)
    except (ValueError, TypeError):
        raise KeystoreCorruptError(f"{what}: invalid base64") from None


def now() -> str:
    """The current UTC time, to the second (``2026-01-31T12:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def canonical(doc: Mapping[str, Any]) -> bytes:
    """``doc`` as compact JSON with sorted keys: the bytes a MAC covers."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
