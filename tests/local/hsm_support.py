"""Start and stop a real ``kmsenvelope hsm serve`` process for the daemon tests (not collected)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from local_support import PASSPHRASE


class Daemon:
    """One ``kmsenvelope hsm serve`` child process on ``socket_path``."""

    def __init__(
        self,
        keystore: Path,
        socket_path: Path,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        passphrase: str | None = PASSPHRASE,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.keystore = keystore
        self.socket_path = socket_path
        full = {k: v for k, v in os.environ.items() if not k.startswith("KMSENVELOPE_HSM")}
        full["KMSENVELOPE_KEYSTORE"] = str(keystore)
        full["KMSENVELOPE_PLUGINS"] = "local"
        full.pop("KMSENVELOPE_KEYSTORE_PASSPHRASE", None)
        if passphrase is not None:
            full["KMSENVELOPE_KEYSTORE_PASSPHRASE"] = passphrase
        full.update(env or {})
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kmsenvelope",
                "hsm",
                "serve",
                "--socket",
                str(socket_path),
                *args,
            ],
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,  # a file, not a pipe: a chatty daemon never blocks on it
            text=True,
            pass_fds=tuple(pass_fds),
        )
        self.stderr = ""

    def wait_ready(self, timeout: float = 30.0) -> Daemon:
        """Wait until the socket accepts connections (or the daemon exits: AssertionError)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}: {self.read_log()}")
            if self.socket_path.exists():
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(self.socket_path))
                    return self
                except OSError:
                    pass
                finally:
                    probe.close()
            time.sleep(0.05)
        self.kill()
        raise AssertionError("daemon did not start listening in time")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait; return the exit status (stderr kept in ``self.stderr``)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr = self.read_log()
        return self.process.returncode

    def read_log(self) -> str:
        """What the daemon wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read()

    def kill(self) -> None:
        """SIGKILL, for a daemon that dies mid-work."""
        self.stop(signal.SIGKILL)

    def __enter__(self) -> Daemon:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.stop()
