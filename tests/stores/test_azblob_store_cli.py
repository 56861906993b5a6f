"""``kmsenvelope migrate az://CONTAINER/PREFIX`` as a user runs it, against Azurite (started by the
tests) for the blobs and the moto server for AWS KMS: 1,000 envelopes to AWS KMS and back, a
multi-chunk blob's payload and properties untouched, a concurrent writer never overwritten,
SIGKILL then ``--resume``, dry run, a missing container, the account key never shown, and the
``[stores.az] account_url`` path through ``DefaultAzureCredential``."""

from __future__ import annotations

import collections
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from shutil import copyfileobj
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
    ContentSettings,
    StandardBlobTier,
)
from azurite_support import (
    AzuriteInfo,
    az_env,
    azurite,
    blob_service,
    fake_token,
    get_all,
    listing,
    new_container,
    put_all,
    self_signed_tls,
    started_azurite,
)
from s3_support import aws_env, cli, kms_key_arn, moto_url
from services.azurite import ACCOUNT_KEY

import kmsenvelope
from kmsenvelope.local import Keystore
from kmsenvelope.migrate import open_store

__all__ = ["aws_env", "az_env", "azurite", "moto_url"]  # fixtures, imported for pytest

PREFIX = "tenants/acme"


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m kmsenvelope ARGS``; whatever happens, the account key is never printed."""
    proc = cli(*args, timeout=timeout)
    assert_no_key(proc.stdout + proc.stderr)
    return proc


def assert_no_key(text: str) -> None:
    assert ACCOUNT_KEY[:12] not in text
    assert ACCOUNT_KEY[-16:] not in text


@pytest.fixture
def keys(keystore: Keystore, az_env: dict[str, str]) -> Keystore:
    keystore.create_key("old")
    keystore.create_key("new")
    return keystore


@pytest.fixture
def service(azurite: AzuriteInfo) -> BlobServiceClient:
    return blob_service(azurite)


@pytest.fixture
def container(service: BlobServiceClient) -> ContainerClient:
    return new_container(service)


def ids_in(data: bytes) -> list[str]:
    return [r.key_id for r in kmsenvelope.inspect_envelope(data).recipients]


def envelopes(count: int, *, sub: str = PREFIX) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``count`` envelopes for ``local:old`` (every third compact) as blobs under ``sub``, and
    their plaintexts."""
    objects, plain = {}, {}
    for i in range(count):
        key = f"{sub}/{i:05d}.env"
        plain[key] = f"secret number {i}".encode()
        compact = i % 3 == 0
        objects[key] = kmsenvelope.encrypt(plain[key], ["local:old"], {"n": str(i)}, armor=compact)
    return objects, plain


def test_thousand_envelopes_to_aws_kms_and_back(
    keys: Keystore, container: ContainerClient, moto_url: str
) -> None:
    objects, plain = envelopes(1000)
    put_all(container, objects)
    container.upload_blob(f"{PREFIX}/README.txt", b"not an envelope")
    outside = kmsenvelope.encrypt(b"elsewhere", ["local:old"], {})
    container.upload_blob(f"{PREFIX}-other/x.env", outside)  # not under PREFIX/
    first = f"{PREFIX}/00001.env"
    container.upload_blob(  # properties an upload would drop unless carried over
        first,
        objects[first],
        overwrite=True,
        content_settings=ContentSettings(content_type="application/x-kmsenvelope"),
        metadata={"owner": "billing"},
        tags={"team": "billing"},
        standard_blob_tier=StandardBlobTier.COOL,
    )
    arn = kms_key_arn(moto_url)
    url = f"az://{container.container_name}/{PREFIX}"
    there = run("migrate", url, "--to", f"aws-kms:{arn}", "--remove", "local:old",
                "--concurrency", "16")  # fmt: skip
    assert there.returncode == 0, there.stderr
    assert "1001 items: 1000 migrated" in there.stderr
    moved = get_all(container, list(objects))
    assert all(ids_in(data) == [f"aws-kms:{arn}"] for data in moved.values())
    assert all(data.startswith(b"kmsenv1.") for k, data in moved.items() if int(k[-9:-4]) % 3 == 0)
    props = container.get_blob_client(first).get_blob_properties()
    assert props.content_settings.content_type == "application/x-kmsenvelope"
    assert props.metadata == {"owner": "billing"}
    assert (props.blob_tier, props.blob_tier_inferred) == ("Cool", False)
    assert container.get_blob_client(first).get_blob_tags() == {"team": "billing"}
    left_alone = {f"{PREFIX}/README.txt": b"not an envelope", f"{PREFIX}-other/x.env": outside}
    assert get_all(container, list(left_alone)) == left_alone

    back = run("migrate", url, "--to", "local:old", "--remove-provider", "aws-kms",
               "--allow", f"aws-kms:{arn}", "--concurrency", "16", "-q")  # fmt: skip
    assert back.returncode == 0, back.stderr
    returned = get_all(container, list(objects))
    for key, data in returned.items():
        assert ids_in(data) == ["local:old/1"], key
        assert kmsenvelope.decrypt(data, {"n": str(int(key[-9:-4]))}) == plain[key]


def payload(data: bytes) -> bytes:
    """The bytes after a binary envelope's header: the encrypted chunks."""
    return data[kmsenvelope.inspect_envelope(data).header_size :]


def test_multi_chunk_payload_and_properties_unchanged(
    keys: Keystore, container: ContainerClient
) -> None:
    big = os.urandom(5 * 1024 * 1024 + 123)  # above one ranged GET and one PUT: blocks
    data = kmsenvelope.encrypt(big, ["local:old"], {"file": "big"})
    assert kmsenvelope.inspect_envelope(data).chunk_size * 2 < len(big)  # several chunks
    settings = ContentSettings(
        content_type="application/x-kmsenvelope",
        content_language="en",
        content_disposition="attachment; filename=big.env",
        cache_control="no-store",
    )
    container.upload_blob("big.env", data, content_settings=settings, metadata={"k": "v"})
    proc = run("migrate", f"az://{container.container_name}", "--to", "local:new",
               "--remove", "local:old")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1 items: 1 migrated" in proc.stderr
    blob = container.get_blob_client("big.env")
    after = blob.download_blob().readall()
    assert ids_in(after) == ["local:new/1"]
    assert payload(after) == payload(data)
    assert kmsenvelope.decrypt(after, {"file": "big"}) == big
    props = blob.get_blob_properties()
    assert props.metadata == {"k": "v"}
    kept = props.content_settings
    assert (kept.content_type, kept.content_language, kept.content_disposition,
            kept.cache_control) == ("application/x-kmsenvelope", "en",
                                    "attachment; filename=big.env", "no-store")  # fmt: skip


def test_a_blob_changed_while_it_is_read_is_not_overwritten(
    keys: Keystore, container: ContainerClient
) -> None:
    """Through the library: each later range of a large blob is read If-Match the first; a
    change in between makes the write report "changed by others", writing nothing."""
    big = os.urandom(9 * 1024 * 1024)  # three ranged GETs
    container.upload_blob("big.bin", big)
    engine = kmsenvelope.default_engine()
    store = open_store(f"az://{container.container_name}", engine.registry, engine.config)
    try:
        item = store.read("big.bin")
        with item.stream as stream:
            assert stream.read(1000) == big[:1000]
            container.upload_blob("big.bin", b"theirs", overwrite=True)
            assert (
                store.write("big.bin", item.version, lambda dst: copyfileobj(stream, dst)) is False
            )
    finally:
        store.close()  # type: ignore[attr-defined]
    assert container.download_blob("big.bin").readall() == b"theirs"


class _Writer(threading.Thread):
    """Another application: re-writes one blob over and over, each time different bytes (the
    same compact envelope behind more leading blanks, which the format allows), until stopped."""

    def __init__(self, container: ContainerClient, key: str, data: bytes) -> None:
        super().__init__(daemon=True)
        self.container, self.key, self.data = container, key, data
        self.stop = threading.Event()
        self.writes = 0
        self.last = data

    def run(self) -> None:
        while not self.stop.is_set():
            self.writes += 1
            body = b" " * (self.writes % 5000) + self.data
            self.container.upload_blob(self.key, body, overwrite=True)
            self.last = body


def test_a_concurrent_change_is_not_overwritten(
    keys: Keystore, container: ContainerClient, tmp_path: Path
) -> None:
    objects, _plain = envelopes(30)
    put_all(container, objects)
    contested = f"{PREFIX}/00009.env"  # compact (9 % 3 == 0)
    writer = _Writer(container, contested, objects[contested])
    writer.start()
    report = tmp_path / "report.json"
    try:
        # The rate limit holds every envelope between its read and its conditional write for
        # tens of milliseconds, while the other application re-writes the blob meanwhile.
        proc = run("migrate", f"az://{container.container_name}/{PREFIX}/", "--to", "local:new",
                   "--remove", "local:old", "--rate-limit", "local=60", "--concurrency", "2",
                   "--report", str(report))  # fmt: skip
    finally:
        writer.stop.set()
        writer.join()
    assert writer.writes > 20
    assert proc.returncode == 13, proc.stderr
    assert "1 changed by others" in proc.stderr
    assert f"changed during the job, not overwritten: {contested}" in proc.stderr
    assert [c["key"] for c in json.loads(report.read_text())["conflicts"]] == [contested]
    final = get_all(container, list(objects))
    assert final[contested] == writer.last  # the other application's last write stands
    assert ids_in(final[contested]) == ["local:old/1"]
    assert all(ids_in(v) == ["local:new/1"] for k, v in final.items() if k != contested)


def done_in(journal: Path) -> collections.Counter[str]:
    done: collections.Counter[str] = collections.Counter()
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if entry.get("status") == "done":
                done[entry["key"]] += 1
    return done


def test_sigkill_then_resume_loses_nothing(
    keys: Keystore, container: ContainerClient, tmp_path: Path
) -> None:
    objects, plain = envelopes(200)
    put_all(container, objects)
    journal = tmp_path / "job.journal"
    cmd = [sys.executable, "-m", "kmsenvelope", "migrate",
           f"az://{container.container_name}/{PREFIX}", "--to", "local:new",
           "--remove", "local:old", "--concurrency", "4",
           "--rate-limit", "local=150",  # 200 envelopes x 3 calls: about 4 s, killed mid-job
           "--resume", "--journal", str(journal)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(done_in(journal).values()) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    on_new = sum(ids_in(d) == ["local:new/1"] for d in get_all(container, list(objects)).values())
    assert 20 <= on_new < len(objects)  # killed mid-job

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert_no_key(final.stdout + final.stderr)
    assert final.returncode == 0, final.stderr
    for key, data in get_all(container, list(objects)).items():
        assert ids_in(data) == ["local:new/1"], key  # each re-wrapped once: one recipient
        assert kmsenvelope.decrypt(data, {"n": str(int(key[-9:-4]))}) == plain[key]
    assert max(done_in(journal).values()) == 1  # never migrated twice
    assert "200 items" in final.stderr
    assert "0 failed, 0 changed by others" in final.stderr


def test_dry_run_changes_nothing(
    keys: Keystore, container: ContainerClient, tmp_path: Path
) -> None:
    objects, _plain = envelopes(20)
    put_all(container, objects)
    before = listing(container)
    proc = run("migrate", f"az://{container.container_name}/{PREFIX}", "--to", "local:new",
               "--remove", "local:old", "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dry run: 20 items: 20 would be migrated" in proc.stderr
    assert listing(container) == before
    assert get_all(container, list(objects)) == objects
    assert not list((tmp_path / "state").rglob("*.journal"))


def test_missing_container_and_bad_urls_are_one_line_errors(keys: Keystore) -> None:
    proc = run("migrate", "az://no-such-container/x", "--to", "local:new")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "kmsenvelope: error: az://no-such-container: no such container 'no-such-container'\n"
    )
    for url, problem in [
        ("az://Bad_Name/x", "invalid container name"),
        ("az://user@box/x", "no user or port"),
        ("az://box?sas=1", "unknown parameter 'sas'"),
    ]:
        proc = run("migrate", url, "--to", "local:new")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert problem in proc.stderr, proc.stderr


def test_the_account_key_is_never_shown(
    keys: Keystore,
    container: ContainerClient,
    azurite: AzuriteInfo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects, _plain = envelopes(3)
    put_all(container, objects)
    url = f"az://{container.container_name}/{PREFIX}"
    # Verbose, and a report: what a successful job prints and writes holds no key.
    report = Path("report.json")
    ok = run("-v", "migrate", url, "--to", "local:new", "--report", str(report))
    assert ok.returncode == 0, ok.stderr
    assert_no_key(report.read_text())
    # A wrong key: the service refuses every request; one line, exit 8, no key.
    wrong = ACCOUNT_KEY[::-1].replace("=", "A") + "=="
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string.replace(ACCOUNT_KEY, wrong)
    )
    denied = cli("-v", "migrate", url, "--to", "local:old")
    assert denied.returncode == 8, denied.stderr
    assert denied.stderr.count("\n") == 1, denied.stderr
    assert re.fullmatch(  # Azure says AuthenticationFailed; Azurite, AuthorizationFailure
        f"kmsenvelope: error: az://{container.container_name}: access denied to listing blobs "
        r"\((AuthenticationFailed|AuthorizationFailure)\)\n",
        denied.stderr,
    )
    assert wrong[:12] not in denied.stderr + denied.stdout
    # A malformed connection string holding a key: refused without echoing any of it.
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountKey={ACCOUNT_KEY};Nonsense")
    bad = run("migrate", url, "--to", "local:old")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith(
        "kmsenvelope: error: AZURE_STORAGE_CONNECTION_STRING is not a valid connection string"
    )
    assert bad.stderr.count("\n") == 1
    # Through the library: neither the store's repr nor an error holds the key.
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    engine = kmsenvelope.default_engine()
    store = open_store(url, engine.registry, engine.config)
    try:
        shown = f"AzureBlobStore(container={container.container_name!r}, prefix='{PREFIX}/')"
        assert repr(store) == str(store) == shown
    finally:
        store.close()  # type: ignore[attr-defined]


# --- [stores.az] account_url and DefaultAzureCredential ---------------------------------------


def write_config(path: Path, table: str) -> Path:
    path.write_text(f"[stores.az]\n{table}\n")
    return path


def test_without_an_account_the_error_says_what_to_set(
    keys: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    proc = run("migrate", "az://box/x", "--to", "local:new")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "kmsenvelope: error: the az:// store needs an account: set "
        "AZURE_STORAGE_CONNECTION_STRING, or account_url in the [stores.az] table of the config "
        "file (used with DefaultAzureCredential)\n"
    )
    config = write_config(tmp_path / "config.toml", 'account_url = "https://a.example"\nsas = 1')
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(config))
    proc = run("migrate", "az://box/x", "--to", "local:new")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr == (
        "kmsenvelope: error: unknown setting 'sas' in [stores.az] of the config file "
        "(accepted: account_url)\n"
    )
    write_config(config, 'account_url = "http://127.0.0.1:1/devstoreaccount1"')
    proc = run("migrate", "az://box/x", "--to", "local:new")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "kmsenvelope: error: [stores.az] account_url must be the account's https URL "
        "(https://ACCOUNT.blob.core.windows.net)\n"
    )


class _IdentityEndpoint(http.server.BaseHTTPRequestHandler):
    """App Service's managed-identity endpoint (``IDENTITY_ENDPOINT``), as azure-identity calls
    it: a token for the resource asked, if the ``X-IDENTITY-HEADER`` secret matches."""

    secret = "identity-header-secret"
    grant = True
    resources: list[str] = []  # noqa: RUF012 - shared by the test and the server thread

    def do_GET(self) -> None:
        resource = parse_qs(urlsplit(self.path).query).get("resource", [""])[0]
        type(self).resources.append(resource)
        if self.headers.get("X-IDENTITY-HEADER") != self.secret or not type(self).grant:
            self._reply(400, {"error": "invalid_request", "error_description": "refused"})
            return
        token, expires = fake_token()
        self._reply(200, {"access_token": token, "expires_on": str(expires),
                          "resource": resource, "token_type": "Bearer"})  # fmt: skip

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def identity_endpoint() -> Iterator[str]:
    """A managed-identity endpoint on a free loopback port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _IdentityEndpoint)
    _IdentityEndpoint.resources = []
    _IdentityEndpoint.grant = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/msi/token"
    finally:
        server.shutdown()
        server.server_close()


def test_account_url_with_default_azure_credential(
    keys: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identity_endpoint: str
) -> None:
    """Azurite over HTTPS with OAuth: the store gets its token from DefaultAzureCredential (here
    its managed identity, App Service style) and sends it as a bearer token; no account key."""
    cert, key = self_signed_tls(tmp_path)
    with started_azurite(cert=cert, key=key, oauth=True) as secure:
        monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
        monkeypatch.setenv("IDENTITY_ENDPOINT", identity_endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", _IdentityEndpoint.secret)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # trust Azurite's certificate
        config = write_config(tmp_path / "config.toml", f'account_url = "{secure.blob_endpoint}"')
        monkeypatch.setenv("KMSENVELOPE_CONFIG", str(config))
        admin = BlobServiceClient.from_connection_string(
            secure.connection_string, connection_verify=str(cert)
        )
        box = new_container(admin)
        objects, plain = envelopes(5)
        put_all(box, objects)

        proc = run("migrate", f"az://{box.container_name}/{PREFIX}", "--to", "local:new",
                   "--remove", "local:old")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "5 items: 5 migrated" in proc.stderr
        assert "https://storage.azure.com" in _IdentityEndpoint.resources
        for name, data in get_all(box, list(objects)).items():
            assert ids_in(data) == ["local:new/1"]
            assert kmsenvelope.decrypt(data, {"n": str(int(name[-9:-4]))}) == plain[name]

        _IdentityEndpoint.grant = False  # the identity has no token to give: one line, exit 8
        proc = run("migrate", f"az://{box.container_name}/{PREFIX}", "--to", "local:old")
        assert proc.returncode == 8, proc.stderr
        assert proc.stderr.startswith(
            f"kmsenvelope: error: az://{box.container_name}: no usable Azure credential: "
            "DefaultAzureCredential got no token"
        )
        assert proc.stderr.count("\n") == 1
