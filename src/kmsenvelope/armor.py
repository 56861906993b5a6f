"""Deprecated: the compact encoding moved to ``kmsenvelope.format.compact``.

Importing this module warns; it re-exports the old names for one release.
"""

from __future__ import annotations

import warnings

from .format import compact as _compact
from .format.compact import *  # noqa: F403

__all__ = list(_compact.__all__)

warnings.warn(
    "kmsenvelope.armor is deprecated: import from kmsenvelope.format.compact",
    DeprecationWarning,
    stacklevel=2,
)
