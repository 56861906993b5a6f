"""Process hygiene for the CLI: termination signals clean up like Ctrl-C; no core dumps.

SIGTERM and SIGHUP raise ``Terminated`` (a ``KeyboardInterrupt``) in the main thread, so every
``finally`` and every handler that cleans up after Ctrl-C (temporary files, journals, reports)
runs for them too. A signal the parent set to be ignored (``nohup``, a background job) stays
ignored. A second signal while cleaning up ends the process at once.

CPython runs a signal's handler only when the main thread next executes Python code, so a signal
that lands while the main thread is inside C code that then blocks (a buffered read of a pipe
loops in C), or that lands on another thread, would wait for more input. A watchdog thread hears
every signal (``signal.set_wakeup_fd``) and, if the handler has not run 0.1 s later, sends it
again to the main thread itself, whose blocking call it interrupts.

Core dumps are turned off for the whole process (RLIMIT_CORE 0 and, on Linux, not dumpable), as
ssh-agent does: a dump would hold data keys, plaintext and the keystore passphrase.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["Terminated", "disable_core_dumps", "exit_code_for", "termination_signals"]

PR_SET_DUMPABLE = 4
_HANDLED = ("SIGINT", "SIGTERM", "SIGHUP")

Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGINT, SIGTERM or SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code_for(exc: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C)."""
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def termination_signals() -> Iterator[None]:
    """While the block runs, SIGINT/SIGTERM/SIGHUP raise ``Terminated`` in the main thread.

    Outside the main thread (the CLI called from a worker thread) nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    guard = _Guard()
    guard.install()
    try:
        yield
    finally:
        guard.uninstall()


class _Guard:
    """Our handlers for the termination signals, and the watchdog that makes them act."""

    def __init__(self) -> None:
        self.previous: dict[int, Handler] = {}
        self.received: list[int] = []  # signals whose handler ran (raised ``Terminated``)
        self.resent = 0  # re-sends not yet absorbed by the handler
        self.main = threading.main_thread().ident or 0
        self.pipe: tuple[int, int] | None = None
        self.old_wakeup = -1
        self.watchdog: threading.Thread | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            if self.resent:  # our own re-send of the signal already handled: not a new one
                self.resent -= 1
                return
            os._exit(128 + signum)  # a second request while cleaning up means "now"
        self.received.append(signum)
        raise Terminated(signum)

    def install(self) -> None:
        for name in _HANDLED:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            current = signal.getsignal(signum)
            if current is signal.SIG_IGN:
                continue  # nohup, or a background job: the parent wants it ignored
            if signum == signal.SIGINT and current is not signal.default_int_handler:
                continue  # someone embedding us handles Ctrl-C their own way
            if signum != signal.SIGINT and current is not signal.SIG_DFL:
                continue
            self.previous[signum] = current
            signal.signal(signum, self.handle)
        if self.previous and hasattr(signal, "pthread_kill"):
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            self.pipe = (read_end, write_end)
            self.old_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            self.watchdog = threading.Thread(
                target=self._watch, name="kmsenvelope-signals", daemon=True
            )
            self.watchdog.start()

    def _watch(self) -> None:
        assert self.pipe is not None
        while True:
            try:
                data = os.read(self.pipe[0], 64)
            except OSError:
                return
            if not data or 0 in data:  # 0: uninstall() asks us to stop
                return
            signum = next((n for n in data if n in self.previous), None)
            if signum is None:
                continue
            for _ in range(50):
                time.sleep(0.1)
                if self.received:
                    break
                self.resent += 1
                signal.pthread_kill(self.main, signum)

    def uninstall(self) -> None:
        if self.pipe is not None:
            signal.set_wakeup_fd(self.old_wakeup)
            with contextlib.suppress(OSError):
                os.write(self.pipe[1], b"\0")
            if self.watchdog is not None:
                self.watchdog.join(1)
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def disable_core_dumps() -> None:
    """No core file for this process (RLIMIT_CORE 0); on Linux also not dumpable, so no core
    via a pipe handler either, and no ptrace or /proc/PID/mem by other processes of the user."""
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter uses
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
