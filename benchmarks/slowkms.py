"""A benchmark-only provider plugin, ``slowkms:NAME``: an AES key that every process derives
from the same (public, benchmark-only) seed, behind a sleep that stands for a KMS round trip.

:mod:`benchmarks.cluster_bench` installs it on Dask workers the way a plugin package is
installed -- an entry point in the ``kmsenvelope`` group -- by putting a ``*.dist-info`` folder
naming this module on the workers' ``PYTHONPATH`` (no pip install). The latency is the
provider setting ``latency_ms`` (``KMSENVELOPE_PROVIDERS__SLOWKMS__LATENCY_MS``, default 20).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path

from kmsenvelope import WrappedKey, hookimpl
from kmsenvelope.hooks import RegisterProvider
from kmsenvelope.memory import InMemoryKEK

SCHEME = "slowkms"
ENTRY_POINT = "slowkms"
SEED = b"kmsenvelope cluster benchmark: not a secret"


class SlowKmsKey:
    """``slowkms:NAME``: sleeps ``latency_ms`` per wrap and unwrap, like a KMS call."""

    def __init__(self, uri: str, settings: Mapping[str, object]) -> None:
        self.key_id = uri
        self._latency = float(str(settings.get("latency_ms", "20"))) / 1000
        self._kek = InMemoryKEK(hashlib.sha256(SEED + uri.encode()).digest(), "slow")

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        time.sleep(self._latency)
        w = self._kek.wrap(dek, context)
        return WrappedKey(SCHEME, self.key_id, w.algorithm, w.ciphertext)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        time.sleep(self._latency)
        inner = WrappedKey("memory", self._kek.key_id, wrapped.algorithm, wrapped.ciphertext)
        return self._kek.unwrap(inner, context)


@hookimpl
def kmsenvelope_register_providers(register: RegisterProvider) -> None:
    """Provide ``slowkms:``."""
    register(SCHEME, SlowKmsKey)


def install_for_workers(root: Path) -> Path:
    """A folder holding a distribution whose ``kmsenvelope`` entry point is this module: put
    it (and the repository root, for ``benchmarks``) on a worker's ``PYTHONPATH``."""
    info = root / "kmsenvelope_bench_slowkms-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: kmsenvelope-bench-slowkms\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(f"[kmsenvelope]\n{ENTRY_POINT} = benchmarks.slowkms\n")
    return root
