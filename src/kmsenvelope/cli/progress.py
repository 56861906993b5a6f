"""Progress on one refreshed stderr line, shown only on a terminal and only for large inputs.

``StatusLine`` owns the line: each redraw blanks what the previous, longer text left behind, and
``end_status_line`` finishes an open line so that an error or "interrupted" message printed next
starts on a line of its own. ``ProgressBar`` draws bytes (encrypt/decrypt) or items (migrate).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import Literal, TextIO

__all__ = ["ProgressBar", "StatusLine", "end_status_line", "maybe_progress"]

THRESHOLD = 16 << 20
BAR_WIDTH = 30
REDRAW_SECONDS = 0.1

_lock = threading.RLock()
_open: StatusLine | None = None  # the line a redraw left unfinished, if any


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _columns() -> int:
    return shutil.get_terminal_size((80, 24)).columns


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class StatusLine:
    """One terminal line redrawn in place (``\\r``), padded so no old characters remain."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self._width = 0

    def show(self, text: str) -> None:
        """Replace the line's text (cut to the terminal width so it never wraps)."""
        global _open
        text = text[: max(_columns() - 1, 20)]
        with _lock:
            if _open is not None and _open is not self:
                _open.finish()
            pad = " " * max(self._width - len(text), 0)
            # Marked open before drawing: Ctrl-C can arrive between any two steps here (the
            # callback runs on the main thread), and the message after it must start a new line.
            self._width = max(len(text), 1)
            _open = self
            self.stream.write(f"\r{text}{pad}")
            self.stream.flush()

    def finish(self) -> None:
        """End the line (newline) if anything is drawn on it; idempotent."""
        global _open
        with _lock:
            if self._width:
                self.stream.write("\n")
                self.stream.flush()
                self._width = 0
            if _open is self:
                _open = None


def end_status_line() -> None:
    """Finish the status line in progress, if any: call before printing any other line."""
    with _lock:
        if _open is not None:
            _open.finish()


class ProgressBar:
    """A bar with percentage, amount, rate and ETA, redrawn at most ten times a second.

    Call it with an increment (``bar(n)``, the engine's progress callback) or ``set`` an
    absolute count; ``close(complete=True)`` draws the final state at exactly the total.
    ``unit`` is ``"bytes"`` (sizes in KiB/MiB…) or ``"items"`` (plain counts).
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        stream: TextIO | None = None,
        *,
        unit: Literal["bytes", "items"] = "bytes",
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.line = StatusLine(stream)
        self.done = 0
        self.note = ""
        self.start = time.monotonic()
        self._last = 0.0
        self._closed = False

    def __call__(self, n: int) -> None:
        with _lock:
            self.done += n
            self._maybe_draw()

    def set(self, done: int, note: str = "") -> None:
        """Set the count done so far and a short note shown after it (e.g. ``3 failed``)."""
        with _lock:
            self.done = done
            self.note = note
            self._maybe_draw()

    def _maybe_draw(self) -> None:
        now = time.monotonic()
        if not self._closed and now - self._last >= REDRAW_SECONDS:
            self._last = now
            self.line.show(self.render(now))

    def _amount(self, n: float) -> str:
        return _size(n) if self.unit == "bytes" else str(int(n))

    def _rate(self, per_second: float) -> str:
        return f"{_size(per_second)}/s" if self.unit == "bytes" else f"{per_second:.1f}/s"

    def render(self, now: float, *, final: bool = False) -> str:
        """The line's text at time ``now`` (``final``: elapsed time instead of an ETA); the
        bar itself is left out when the terminal is too narrow for the whole line."""
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        note = f" ({self.note})" if self.note else ""
        if not self.total:
            return f"{self.label} {self._amount(self.done)}{note} {self._rate(rate)}"
        frac = min(self.done / self.total, 1.0)
        if final or self.done >= self.total:
            when = f"in {_duration(elapsed)}"
        elif rate > 0:
            when = f"ETA {_duration((self.total - self.done) / rate)}"
        else:
            when = "ETA ?"
        tail = (
            f"{int(frac * 100):3d}% {self._amount(self.done)}/{self._amount(self.total)}{note} "
            f"{self._rate(rate)} {when}"
        )
        # The bar takes what the terminal has left, up to BAR_WIDTH; none below 10 columns.
        # Floors, so the bar is full and 100 % is shown only when everything is done.
        width = min(BAR_WIDTH, _columns() - 1 - len(self.label) - len(tail) - 4)
        if width < 10:
            return f"{self.label} {tail}"
        return f"{self.label} [{'#' * int(frac * width):<{width}}] {tail}"

    def close(self, complete: bool = False) -> None:
        """Draw the last state (at the total if ``complete``) and end the line."""
        with _lock:
            if self._closed:
                return
            self._closed = True
            if complete and self.total is not None:
                self.done = self.total
            self.line.show(self.render(time.monotonic(), final=True))
            self.line.finish()


def maybe_progress(total: int | None, label: str, quiet: bool) -> ProgressBar | None:
    """A progress bar if stderr is a terminal and the input is large (or of unknown size)."""
    if quiet or not sys.stderr.isatty():
        return None
    if total is not None and total < THRESHOLD:
        return None
    return ProgressBar(total, label)
