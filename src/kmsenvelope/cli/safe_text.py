"""Make untrusted text safe to print on a terminal or write to a log.

Key ids, contexts and reasons can come from an envelope or a key store that someone else wrote.
Printed raw, ESC sequences could recolour or rewrite the terminal, CR could hide the start of a
line, BEL could ring, and bidi controls could reorder what the user reads. ``printable`` escapes
every such character, Python-style (``\\x1b``, ``\\u202e``), and leaves everything else as is.
"""

from __future__ import annotations

import logging

__all__ = ["SafeFormatter", "printable"]

_ESCAPES: dict[str, str] = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character (C0, DEL, C1, format, line and paragraph
    separators, surrogates, unassigned) escaped, so it shows as one inert line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


class SafeFormatter(logging.Formatter):
    """A log formatter that escapes control characters in messages, exceptions and stacks.

    Each record stays one line (its own newlines are escaped); a traceback keeps one line per
    frame, each line escaped.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _lines(super().formatStack(stack_info))


def _lines(text: str) -> str:
    return "\n".join(printable(line) for line in text.split("\n"))
