"""Streaming uses constant memory: peak RSS does not grow with the size of the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import io, json, sys
from kmsenvelope import Engine, ProviderRegistry
from kmsenvelope.config import Config
from kmsenvelope.memory import InMemoryKEK

size = int(sys.argv[1]); path = sys.argv[2]

class Source(io.RawIOBase):
    '''size bytes of a repeating pattern, produced on demand (never held in memory).'''
    def __init__(self, n): self.left = n
    def readable(self): return True
    def readinto(self, view):
        n = min(len(view), self.left)
        view[:n] = bytes([self.left % 251]) * n
        self.left -= n
        return n

class Sink(io.RawIOBase):
    def __init__(self): self.count = 0
    def writable(self): return True
    def write(self, b): self.count += len(b); return len(b)

kek = InMemoryKEK.generate()
engine = Engine(registry=ProviderRegistry(), config=Config(), keys=[kek])
with open(path, "wb") as dst:
    engine.encrypt_stream(Source(size), dst, [kek])
sink = Sink()
with open(path, "rb") as src:
    engine.decrypt_stream(src, sink)
assert sink.count == size, sink.count
# VmHWM belongs to this process image; ru_maxrss would include the forking parent's RSS.
with open("/proc/self/status") as fh:
    hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
print(json.dumps({"maxrss_kib": hwm}))
"""


def peak_rss_kib(size: int, tmp_path: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(size), str(tmp_path / f"env-{size}")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (tmp_path / f"env-{size}").unlink()
    return int(json.loads(out.stdout)["maxrss_kib"])


def test_peak_rss_flat_as_size_grows(tmp_path: Path) -> None:
    small = peak_rss_kib(16 << 20, tmp_path)
    large = peak_rss_kib(512 << 20, tmp_path)
    # 32x more data; a buffering implementation would grow by hundreds of MiB.
    assert large - small < 8 * 1024, (small, large)
    assert large < 96 * 1024, large
