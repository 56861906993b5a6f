"""Azurite's blob service on a free loopback port, started and stopped by a context manager.

The binary is, in this order: ``$KMSENVELOPE_AZURITE_BLOB``, ``azurite-blob`` on ``PATH``, or
``<repo>/.cache/npm/node_modules/.bin/azurite-blob`` (``npm install --prefix .cache/npm
azurite@3.35.0``, as ``.ci/run`` does). No pytest here: ``benchmarks/migration.py`` uses it too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ACCOUNT",
    "ACCOUNT_KEY",
    "BINARY_ENV",
    "AzuriteInfo",
    "AzuriteMissing",
    "find_azurite",
    "start_azurite",
]

BINARY_ENV = "KMSENVELOPE_AZURITE_BLOB"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (  # Azurite's well-known development key (public, in every Azurite doc)
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
REPO = Path(__file__).resolve().parents[2]
LOCAL_BINARY = REPO / ".cache" / "npm" / "node_modules" / ".bin" / "azurite-blob"
START_TIMEOUT = 60.0


class AzuriteMissing(RuntimeError):
    """No azurite-blob binary could be found."""


@dataclass(frozen=True)
class AzuriteInfo:
    """A running Azurite blob service: its endpoint (``http[s]://127.0.0.1:PORT/ACCOUNT``), the
    connection string for it (with the well-known account key) and its process id."""

    blob_endpoint: str
    connection_string: str
    port: int
    pid: int


def find_azurite() -> str:
    """The azurite-blob binary to run (``AzuriteMissing`` with what to do, if none)."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise AzuriteMissing(f"{BINARY_ENV}={explicit} is not an executable file")
        return explicit
    on_path = shutil.which("azurite-blob")
    if on_path:
        return on_path
    if os.access(LOCAL_BINARY, os.X_OK):
        return str(LOCAL_BINARY)
    raise AzuriteMissing(
        "azurite-blob not found: run 'npm install --prefix .cache/npm azurite@3.35.0' in the "
        f"repository, put azurite-blob on PATH, or set {BINARY_ENV}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"azurite-blob exited with {proc.returncode}: {log.read_text(errors='replace')}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"azurite-blob did not listen on port {port} in {START_TIMEOUT:.0f} s")


@contextmanager
def start_azurite(
    *,
    cert: Path | None = None,
    key: Path | None = None,
    oauth: bool = False,
    in_memory: bool = True,
) -> Iterator[AzuriteInfo]:
    """Run azurite-blob on a free port of 127.0.0.1 until the block ends (then kill it).

    ``cert`` and ``key`` (PEM files) serve HTTPS; ``oauth`` (which needs them) also accepts
    bearer tokens (Azurite checks their issuer, audience and lifetime, not their signature).
    ``in_memory`` keeps blobs in memory (faster); otherwise in a temporary directory.
    """
    binary = find_azurite()
    with tempfile.TemporaryDirectory(prefix="azurite-") as workdir:
        port = _free_port()
        command = [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--silent",
                   "--skipApiVersionCheck", "--loose", "--disableTelemetry"]  # fmt: skip
        command += ["--inMemoryPersistence"] if in_memory else ["--location", workdir]
        if cert is not None and key is not None:
            command += ["--cert", str(cert), "--key", str(key)]
        if oauth:
            command += ["--oauth", "basic"]
        log = Path(workdir) / "azurite.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            _wait_until_listening(proc, port, log)
            scheme = "https" if cert is not None else "http"
            endpoint = f"{scheme}://127.0.0.1:{port}/{ACCOUNT}"
            yield AzuriteInfo(
                blob_endpoint=endpoint,
                connection_string=(
                    f"DefaultEndpointsProtocol={scheme};AccountName={ACCOUNT};"
                    f"AccountKey={ACCOUNT_KEY};BlobEndpoint={endpoint};"
                ),
                port=port,
                pid=proc.pid,
            )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
