"""Deprecated: the HKDF and HMAC helpers moved to ``kmsenvelope.format.keyschedule``.

Importing this module warns; it re-exports the old names for one release.
"""

from __future__ import annotations

import warnings

from .format.keyschedule import hkdf_sha256, hkdf_sha256_two_blocks, hmac_sha256

__all__ = ["hkdf_sha256", "hkdf_sha256_two_blocks", "hmac_sha256"]

warnings.warn(
    "kmsenvelope.kdf is deprecated: import from kmsenvelope.format.keyschedule",
    DeprecationWarning,
    stacklevel=2,
)
