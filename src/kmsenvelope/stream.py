"""Deprecated: the chunk codec moved to ``kmsenvelope.format.chunks``, streaming to ``pipeline``.

Importing this module warns; it re-exports the old names for one release.
"""

from __future__ import annotations

import warnings

from . import pipeline as _pipeline
from .format.chunks import SINGLE_FINAL_NONCE, TAG_SIZE, chunk_nonce, payload_length
from .pipeline import *  # noqa: F403
from .pipeline import Progress

__all__ = [
    *_pipeline.__all__,
    "SINGLE_FINAL_NONCE",
    "TAG_SIZE",
    "Progress",
    "chunk_nonce",
    "payload_length",
]

warnings.warn(
    "kmsenvelope.stream is deprecated: import from kmsenvelope.pipeline (chunk_nonce, "
    "payload_length, SINGLE_FINAL_NONCE, TAG_SIZE: kmsenvelope.format.chunks)",
    DeprecationWarning,
    stacklevel=2,
)
