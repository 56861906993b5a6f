"""An Azure Blob Storage endpoint for store tests: Azurite on a free loopback port, started by the
tests (``tests/services/azurite.py``), spoken to by real azure-storage-blob; helpers to fill and
read a container, and the pieces the ``account_url`` tests need (a TLS certificate, a token)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from services.azurite import AzuriteInfo, AzuriteMissing, find_azurite, start_azurite

__all__ = [
    "AzuriteInfo",
    "az_env",
    "azurite",
    "blob_service",
    "fake_token",
    "get_all",
    "listing",
    "new_container",
    "put_all",
    "self_signed_tls",
    "started_azurite",
]

PLUGINS = "local,aws-kms,azure-kv"


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteInfo]:
    """Azurite's blob service for the whole session (blobs in memory)."""
    with started_azurite() as info:
        yield info


@contextmanager
def started_azurite(
    *, cert: Path | None = None, key: Path | None = None, oauth: bool = False
) -> Iterator[AzuriteInfo]:
    """:func:`start_azurite`, skipping the test when Azurite is not installed, except in CI
    (``CI`` set), where a missing Azurite fails the tests rather than hiding them."""
    try:
        find_azurite()
    except AzuriteMissing as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI is set: the Azure Blob store tests must run)")
        pytest.skip(str(exc))
    with start_azurite(cert=cert, key=key, oauth=oauth) as info:
        yield info


@pytest.fixture
def az_env(
    azurite: AzuriteInfo, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """What a user has: ``AZURE_STORAGE_CONNECTION_STRING`` naming Azurite (no other Azure
    setting of the developer's), the AWS chain naming moto, the local, aws-kms and azure-kv
    plugins."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", PLUGINS)
    return {**aws_env, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}


def blob_service(info: AzuriteInfo) -> BlobServiceClient:
    """A plain client (the test's, not the store's)."""
    return BlobServiceClient.from_connection_string(info.connection_string)


def new_container(service: BlobServiceClient) -> ContainerClient:
    return service.create_container(f"envelopes-{uuid.uuid4().hex[:12]}")


def put_all(container: ContainerClient, objects: Mapping[str, bytes]) -> None:
    """Upload ``objects`` (name -> bytes), 8 at a time (the client keeps 10 connections)."""
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda item: container.upload_blob(item[0], item[1], overwrite=True),
                objects.items(),
            )
        )


def get_all(container: ContainerClient, names: list[str]) -> dict[str, bytes]:
    """The content of ``names``, as the service serves it."""
    with ThreadPoolExecutor(8) as pool:
        contents = pool.map(lambda name: container.download_blob(name).readall(), names)
        return dict(zip(names, contents, strict=True))


def listing(container: ContainerClient) -> dict[str, str]:
    """Every blob of ``container`` and its ETag."""
    return {str(blob.name): str(blob.etag) for blob in container.list_blobs()}


def self_signed_tls(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files), for Azurite's HTTPS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "azurite.pem", directory / "azurite-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def fake_token(lifetime: int = 3600) -> tuple[str, int]:
    """An unsigned Entra-style access token for Azure Storage (Azurite's basic OAuth checks the
    issuer, audience and lifetime, not the signature), and when it expires."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "aud": "https://storage.azure.com",
        "iss": f"https://sts.windows.net/{uuid.uuid4()}/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + lifetime,
        "oid": str(uuid.uuid4()),
        "tid": str(uuid.uuid4()),
    }
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl", now + lifetime
