"""A minimal progress bar on stderr, shown only on a terminal and only for large inputs."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "maybe_progress"]

THRESHOLD = 16 << 20


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class ProgressBar:
    """Redraws one status line at most ten times a second."""

    def __init__(self, total: int | None, label: str, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.label = label
        self.stream = stream
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-6)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            eta = (self.total - self.done) / rate if rate > 0 else 0
            text = (
                f"\r{self.label} [{bar:<30}] {frac:4.0%} {_size(self.done)}/"
                f"{_size(self.total)} {_size(rate)}/s ETA {eta:.0f}s"
            )
        else:
            text = f"\r{self.label} {_size(self.done)} {_size(rate)}/s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def maybe_progress(total: int | None, label: str, quiet: bool) -> ProgressBar | None:
    """A progress bar if stderr is a terminal and the input is large (or of unknown size)."""
    if quiet or not sys.stderr.isatty():
        return None
    if total is not None and total < THRESHOLD:
        return None
    return ProgressBar(total, label)
