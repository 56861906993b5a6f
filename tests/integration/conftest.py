"""Fixtures for the cross-provider integration tests: moto, the Azure Key Vault emulator, and a
``World`` (working directory, kmsenvelope.toml, environment for the real CLI).

The emulator helpers of ``tests/aws``, ``tests/azure``, ``tests/gcp`` and ``tests/vault`` are
reused by putting those folders on ``sys.path`` (their module names -- ``aws_testing``,
``azure_kv_emulator``, ``azure_kv_cloud``, ``kms_emulator``, ``transit_emulator`` -- are unique
in the repository).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _folder in ("aws", "azure", "gcp", "vault"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from integration_world import World, clean_process_env  # noqa: E402

if TYPE_CHECKING:
    from azure_kv_cloud import Cloud
    from kms_emulator import KmsEmulator
    from transit_emulator import TransitEmulator


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server in this process on a free port of 127.0.0.1 (the CLI talks to it)."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azure_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """Emulated Entra ID + a Key Vault (RSA keys) + a Managed HSM (oct-HSM keys), over HTTPS."""
    pytest.importorskip("kmsenvelope_azure")
    from azure_kv_cloud import SECRETS, TENANT, Cloud
    from azure_kv_emulator import Authority, Client, make_tls

    tmp = tmp_path_factory.mktemp("integration-azure")
    tls = make_tls(tmp / "tls")
    authority = Authority(tls, TENANT)
    for client_id, secret in SECRETS.items():
        authority.add_client(Client(client_id, secret=secret))
    authority.start()
    cloud = Cloud(tls, authority, tmp)
    cloud.vault = cloud.start_vault()
    cloud.hsm = cloud.start_vault(hsm=True)
    try:
        yield cloud
    finally:
        cloud.vault.stop()
        cloud.hsm.stop()
        authority.stop()


@pytest.fixture
def gcp_kms() -> Iterator[KmsEmulator]:
    """The Cloud KMS emulator of tests/gcp (gRPC and REST) on free ports of 127.0.0.1."""
    pytest.importorskip("kmsenvelope_gcp")
    from kms_emulator import KmsEmulator

    kms = KmsEmulator().start()
    try:
        yield kms
    finally:
        kms.stop()


@pytest.fixture
def vault_transit() -> Iterator[TransitEmulator]:
    """The Vault Transit emulator of tests/vault (HTTP on a free port of 127.0.0.1)."""
    pytest.importorskip("kmsenvelope_vault")
    from transit_emulator import TransitEmulator

    vault = TransitEmulator().start()
    try:
        yield vault
    finally:
        vault.stop()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    """An empty working directory for the CLI, and this process's environment cleaned the same
    way (no ambient AWS/Azure identity, proxies bypassed for 127.0.0.1)."""
    clean_process_env(monkeypatch)
    made = World(tmp_path)
    for name, value in made.env.items():
        if name.startswith(("AWS_", "KMSENVELOPE_KEYSTORE_PASSPHRASE", "NO_PROXY")):
            monkeypatch.setenv(name, value)
    return made
