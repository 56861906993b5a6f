"""Fixtures for the vault-transit tests: the Transit emulator, and ``vault``/``bao server -dev``
when such a binary is on PATH.

``backend`` is parametrized: ``emulator`` always runs; ``vault-dev`` and ``bao-dev`` run against a
real dev server when ``vault`` or ``bao`` is installed and are skipped (saying so) otherwise. The
header of the run and a printed line name what was used. Tests that need what only the emulator
offers (its request log, injected faults, Kubernetes login, namespaces) use ``emulator``.
Everything talks to 127.0.0.1 only, and no ambient VAULT_* variable or proxy reaches a test.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests
from transit_emulator import TransitEmulator
from vault_backends import Backend

_REAL = {"vault-dev": "vault", "bao-dev": "bao"}


def pytest_report_header() -> str:
    found = [f"{name} ({shutil.which(name)})" for name in _REAL.values() if shutil.which(name)]
    used = ", ".join(["Transit emulator", *found])
    if not found:
        used += "; no vault/bao binary on PATH: the *-dev variants are skipped"
    return f"vault-transit backends: {used}"


@pytest.fixture(autouse=True)
def _no_ambient_vault(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("VAULT_", "BAO_")) or name.lower() in (
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "requests_ca_bundle",
            "curl_ca_bundle",
        ):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_real(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = _free_port()
    token = "root-" + secrets.token_hex(8)
    log = (workdir / f"{binary}.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "server",
            "-dev",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
    )
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{address}/v1/sys/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"{binary} server -dev did not start; see {workdir / f'{binary}.log'}")
    hvac.Client(url=address, token=token).sys.enable_secrets_engine("transit", path="transit")
    return process, address, token


@pytest.fixture(scope="session")
def emulator_backend() -> Iterator[Backend]:
    emulator = TransitEmulator().start()
    print(f"\nvault-transit: using the Transit emulator at {emulator.address}")
    try:
        yield Backend("emulator", emulator.address, emulator.root_token, emulator)
    finally:
        emulator.stop()


@pytest.fixture(
    scope="session",
    params=[
        "emulator",
        pytest.param(
            "vault-dev",
            marks=pytest.mark.skipif(
                shutil.which("vault") is None, reason="no 'vault' binary on PATH"
            ),
        ),
        pytest.param(
            "bao-dev",
            marks=pytest.mark.skipif(shutil.which("bao") is None, reason="no 'bao' binary on PATH"),
        ),
    ],
)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """The emulator, or a real ``vault``/``bao`` dev server (parametrized, see the module)."""
    if request.param == "emulator":
        yield request.getfixturevalue("emulator_backend")
        return
    binary = _REAL[request.param]
    process, address, token = _start_real(binary, tmp_path_factory.mktemp(binary))
    print(f"\nvault-transit: using {binary} server -dev at {address}")
    try:
        yield Backend(request.param, address, token)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def emulator(emulator_backend: Backend) -> Iterator[TransitEmulator]:
    """The emulator itself (request log cleared, no faults left over)."""
    made = emulator_backend.emulator
    assert made is not None
    made.clear_calls()
    made.faults.clear()
    made.echo_token_in_errors = False
    yield made
    made.faults.clear()
    made.echo_token_in_errors = False
