"""Helpers shared by the CLI tests (not collected: the name has no ``test_`` prefix)."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``python -m kmsenvelope ARGS`` in a fresh process, ``stdin`` fed, output kept as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
    )
