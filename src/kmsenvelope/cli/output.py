"""Where CLI output goes: stdout, or a file written atomically (temp file, then rename)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import ConfigError

__all__ = ["open_input", "open_output"]


@contextlib.contextmanager
def open_input(name: str) -> Iterator[BinaryIO]:
    """``-`` is stdin; anything else a file opened for binary reading."""
    if name == "-":
        yield sys.stdin.buffer
        return
    try:
        fh = open(name, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ConfigError(f"input file {name} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"input {name} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"cannot read {name}: permission denied") from None
    with fh:
        yield fh


@contextlib.contextmanager
def open_output(name: str, *, binary_to_tty_ok: bool) -> Iterator[BinaryIO]:
    """Yield a writable binary stream; for a file, commit it only if the block succeeds.

    The file is written to a temporary sibling (mode 0600) and renamed into place on success;
    on any error the temporary file is removed, so a failed decrypt leaves no partial output.
    """
    if name == "-":
        if not binary_to_tty_ok and sys.stdout.isatty():
            raise ConfigError(
                "refusing to write binary output to a terminal: use -o FILE or --armor"
            )
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(name)
    if target.is_dir():
        raise ConfigError(f"output {name} is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"output directory {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=parent)
    except PermissionError:
        raise ConfigError(f"cannot write to {parent}: permission denied") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
