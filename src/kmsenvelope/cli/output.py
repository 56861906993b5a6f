"""Where CLI output goes: stdout, a device or FIFO written through, or a file committed atomically.

A regular file (or a name not yet taken) is written to a temporary file in the same directory,
fsynced, renamed into place only when the command succeeds, and the directory fsynced. On Linux
the temporary file is unnamed (``O_TMPFILE``) until it is complete, so not even SIGKILL leaves a
file behind; elsewhere it is ``.NAME.PID.RANDOM.partial`` and such files of dead processes are
swept before the next write to the same name. What is there already is never replaced unless it is
a regular file: a symlink stays a symlink (the file it points to is replaced), and a character or
block device or a FIFO (``/dev/null``, a named pipe) is written through, like stdout.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import ConfigError
from .safe_text import printable

__all__ = ["open_input", "open_output"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_TMPFILE = getattr(os, "O_TMPFILE", 0)
# O_TMPFILE is refused with these where the kernel or the filesystem lacks it.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP}
# /proc/self/fd/1, /proc/PID/task/TID/fd/3, /dev/fd/1 (where /dev/fd is its own filesystem).
_DESCRIPTOR_PATH = re.compile(r"/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd/\d+|/dev/fd/\d+")


@contextlib.contextmanager
def open_input(name: str) -> Iterator[BinaryIO]:
    """``-`` is stdin; anything else a file opened for binary reading."""
    if name == "-":
        yield sys.stdin.buffer
        return
    try:
        fh = open(name, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ConfigError(f"input file {printable(name)} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"input {printable(name)} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"cannot read {printable(name)}: permission denied") from None
    with fh:
        yield fh


@contextlib.contextmanager
def open_output(name: str, *, binary_to_tty_ok: bool) -> Iterator[BinaryIO]:
    """Yield a writable binary stream; a file is committed only if the block succeeds.

    ``binary_to_tty_ok=False`` refuses a terminal (stdout or ``-o /dev/tty``).
    """
    if name == "-":
        if not binary_to_tty_ok and sys.stdout.isatty():
            raise ConfigError(
                "refusing to write binary output to a terminal: use -o FILE or --armor"
            )
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    through, path = _classify(name)
    if through:
        with _write_through(name, binary_to_tty_ok) as fh:
            yield fh
        return
    with _atomic_file(path) as fh:
        yield fh


def _classify(name: str) -> tuple[bool, Path]:
    """(write through?, the path to write): devices, FIFOs and ``/dev/stdout``-style links to
    our own descriptors are written through; anything else must be a regular file or absent,
    and a symlink is followed to the file it names."""
    shown = printable(name)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        st = None  # absent, or a symlink to a file not yet created
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"output {shown} is a symlink loop") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"cannot write to {shown}: permission denied") from None
        raise
    if st is not None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"output {shown} is a directory")
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            return True, Path(name)
        if not stat.S_ISREG(mode):
            raise ConfigError(f"output {shown} is not a regular file, device or FIFO; not replaced")
        if _names_open_descriptor(name):
            return True, Path(name)
    return False, Path(os.path.realpath(name))


def _names_open_descriptor(name: str) -> bool:
    """Whether ``name`` leads through /proc or /dev/fd (``/dev/stdout``, ``/dev/fd/3``): such a
    path names a descriptor we already hold, so it is written through, never replaced."""
    path = os.path.abspath(name)
    for _ in range(40):
        parent = os.path.realpath(os.path.dirname(path))
        full = os.path.join(parent, os.path.basename(path))
        if _DESCRIPTOR_PATH.fullmatch(full):
            return True
        if not os.path.islink(full):
            return False
        path = os.path.join(parent, os.readlink(full))
    return False


@contextlib.contextmanager
def _write_through(name: str, binary_to_tty_ok: bool) -> Iterator[BinaryIO]:
    """Write straight into a device or FIFO (or our own stdout via /dev/stdout), as a shell
    redirection would: what is written is released at once, before the end authenticates."""
    shown = printable(name)
    try:
        fd = os.open(name, os.O_WRONLY | _NOCTTY | _CLOEXEC)
    except PermissionError:
        raise ConfigError(f"cannot write to {shown}: permission denied") from None
    except FileNotFoundError:
        raise ConfigError(f"output {shown} disappeared") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            if not _names_open_descriptor(name):
                raise ConfigError(f"output {shown} was replaced while opening it; not written")
            _append(fd)  # add to what the shell's redirection holds, never overwrite it
        elif not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
            raise ConfigError(f"output {shown} is not a regular file, device or FIFO; not written")
        if not binary_to_tty_ok and os.isatty(fd):
            raise ConfigError(
                "refusing to write binary output to a terminal: use -o FILE or --armor"
            )
        fh = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh
        fh.flush()


def _append(fd: int) -> None:
    import fcntl

    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[BinaryIO]:
    """Yield a new file that replaces ``target`` (a regular file or nothing) only on success."""
    parent = target.parent
    if not parent.is_dir():
        raise ConfigError(f"output directory {printable(str(parent))} does not exist")
    _sweep_stale(parent, target.name)
    fd, temp = _create_temp(parent, target.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            if temp is None:
                temp = _link_unnamed(fh.fileno(), parent, target.name)
        _check_replaceable(target)
        os.replace(temp, target)
        temp = None
        _fsync_dir(parent)
    except BaseException:
        if temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        raise


def _temp_name(parent: Path, name: str) -> Path:
    return parent / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.partial"


def _create_temp(parent: Path, name: str) -> tuple[int, Path | None]:
    """An open file for the output: unnamed (path ``None``) where O_TMPFILE works, else a new
    ``.NAME.PID.RANDOM.partial`` (mode 0600 in both cases)."""
    if _TMPFILE and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(parent, _TMPFILE | os.O_WRONLY | _CLOEXEC, 0o600), None
        except PermissionError:
            raise ConfigError(
                f"cannot write to {printable(str(parent))}: permission denied"
            ) from None
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    while True:
        temp = _temp_name(parent, name)
        try:
            return os.open(temp, flags, 0o600), temp
        except FileExistsError:
            continue
        except PermissionError:
            raise ConfigError(
                f"cannot write to {printable(str(parent))}: permission denied"
            ) from None


def _link_unnamed(fd: int, parent: Path, name: str) -> Path:
    """Give the complete unnamed file a temporary name beside the target (linkat through
    /proc/self/fd), from which it is renamed into place."""
    # With a directory descriptor os.link calls linkat(..., AT_SYMLINK_FOLLOW), which links
    # the file the magic link points to (plain link() would try to link the /proc entry).
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        while True:
            temp = _temp_name(parent, name)
            try:
                os.link(f"/proc/self/fd/{fd}", temp.name, dst_dir_fd=dir_fd, follow_symlinks=True)
            except FileExistsError:
                continue
            return temp
    finally:
        os.close(dir_fd)


def _check_replaceable(target: Path) -> None:
    """Refuse at the last moment if something other than a regular file took the name."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"output {printable(str(target))} was replaced by something that is not a regular "
            "file while writing; not replaced"
        )


def _fsync_dir(path: Path) -> None:
    """Make the rename durable (some filesystems cannot fsync a directory: ignore that)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _sweep_stale(parent: Path, name: str) -> None:
    """Remove ``.NAME.PID.RANDOM.partial`` files we own whose process is gone."""
    if os.name != "posix":
        return
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d+)\.[0-9a-f]+\.partial")
    prefix = f".{name}."
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
