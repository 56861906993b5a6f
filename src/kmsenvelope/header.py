"""Deprecated: the header moved to ``kmsenvelope.format.header`` (keys: ``format.keyschedule``).

Importing this module warns; it re-exports the old names for one release.
"""

from __future__ import annotations

import warnings

from .format import header as _header
from .format.chunks import TAG_SIZE
from .format.compact import COMPACT_PREFIX
from .format.header import *  # noqa: F403
from .format.keyschedule import DEK_SIZE, MAC_SIZE, derive_keys

__all__ = [*_header.__all__, "COMPACT_PREFIX", "DEK_SIZE", "MAC_SIZE", "TAG_SIZE", "derive_keys"]

warnings.warn(
    "kmsenvelope.header is deprecated: import from kmsenvelope.format.header "
    "(derive_keys, DEK_SIZE, MAC_SIZE: kmsenvelope.format.keyschedule; "
    "COMPACT_PREFIX: kmsenvelope.format.compact; TAG_SIZE: kmsenvelope.format.chunks)",
    DeprecationWarning,
    stacklevel=2,
)
