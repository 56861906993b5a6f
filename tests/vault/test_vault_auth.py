"""How the provider authenticates -- VAULT_TOKEN and token files as the Vault CLI reads them,
AppRole, Kubernetes -- and namespace, ca_bundle and multi-segment mounts; no secret in any
message, repr or log line."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from transit_emulator import TransitEmulator, make_tls
from vault_backends import Backend, unique

from kmsenvelope import ProviderUnavailableError
from kmsenvelope.errors import AccessDeniedError, KeyNotFoundError, ProviderError
from kmsenvelope_vault.provider import VaultTransitProvider

CONTEXT = {"tenant": "t-1"}


def _round_trip(provider: VaultTransitProvider, uri: str, settings: dict[str, object]) -> None:
    kek = provider(uri, settings)
    dek = os.urandom(32)
    assert kek.unwrap(kek.wrap(dek, CONTEXT), CONTEXT) == dek


def test_vault_token_wins_over_the_token_file(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = backend.uri(backend.create_key())
    token_file = Path.home() / ".vault-token"  # HOME is private to the test
    token_file.write_text(backend.root_token + "\n")
    _round_trip(VaultTransitProvider(), uri, backend.settings())  # the file alone works

    monkeypatch.setenv("VAULT_TOKEN", "hvs.not-a-valid-token")
    with pytest.raises(AccessDeniedError):  # VAULT_TOKEN wins, even when the file's is good
        VaultTransitProvider()(uri, backend.settings()).wrap(os.urandom(32), {})

    token_file.write_text("hvs.not-valid-either")
    monkeypatch.setenv("VAULT_TOKEN", backend.root_token)
    _round_trip(VaultTransitProvider(), uri, backend.settings())


def test_token_file_setting(backend: Backend, tmp_path: Path) -> None:
    token_file = tmp_path / "agent-token"
    token_file.write_text(backend.root_token)
    uri = backend.uri(backend.create_key())
    _round_trip(VaultTransitProvider(), uri, backend.settings(token_file=str(token_file)))


def test_missing_token_is_access_denied_before_any_request(emulator: TransitEmulator) -> None:
    uri = f"vault-transit:{emulator.address}/transit/keys/{unique('k')}"
    with pytest.raises(AccessDeniedError) as caught:
        VaultTransitProvider()(uri, {}).wrap(os.urandom(32), {})
    assert "no Vault token: set VAULT_TOKEN" in str(caught.value)
    assert emulator.calls == []


def test_approle_login(backend: Backend, tmp_path: Path) -> None:
    role_id, secret_id = backend.approle()
    uri = backend.uri(backend.create_key())
    settings = backend.settings(auth="approle", role_id=role_id, secret_id=secret_id)
    _round_trip(VaultTransitProvider(), uri, settings)
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id + "\n")
    by_file = backend.settings(auth="approle", role_id=role_id, secret_id_file=str(secret_file))
    _round_trip(VaultTransitProvider(), uri, by_file)
    wrong = backend.settings(auth="approle", role_id=role_id, secret_id="wrong-secret-id")
    with pytest.raises(AccessDeniedError) as caught:
        VaultTransitProvider()(uri, wrong).wrap(os.urandom(32), {})
    assert "login" in str(caught.value)
    assert "wrong-secret-id" not in str(caught.value)


def test_approle_logs_in_again_when_its_token_is_revoked(
    emulator_backend: Backend, emulator: TransitEmulator
) -> None:
    role_id, secret_id = emulator_backend.approle()
    uri = emulator_backend.uri(emulator_backend.create_key())
    settings = emulator_backend.settings(auth="approle", role_id=role_id, secret_id=secret_id)
    kek = VaultTransitProvider()(uri, settings)
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, CONTEXT)
    for token in list(emulator.tokens):
        if token != emulator.root_token:
            emulator.revoke(token)  # the login token expires
    assert kek.unwrap(wrapped, CONTEXT) == dek
    assert emulator.operations().count("login") == 2


def test_kubernetes_login_with_the_service_account_token_file(
    emulator_backend: Backend, emulator: TransitEmulator, tmp_path: Path
) -> None:
    jwt_file = tmp_path / "token"
    jwt_file.write_text("eyJhbGciOiJSUzI1NiJ9.service-account.sig")
    emulator.add_kubernetes_role("app", jwt_file.read_text())
    uri = emulator_backend.uri(emulator_backend.create_key())
    settings = emulator_backend.settings(
        auth="kubernetes", role="app", kubernetes_token_file=str(jwt_file)
    )
    _round_trip(VaultTransitProvider(), uri, settings)
    assert emulator.operations()[1:] == ["login", "read", "encrypt", "decrypt"]
    jwt_file.write_text("eyJ.another-cluster.sig")
    with pytest.raises(AccessDeniedError) as caught:
        VaultTransitProvider()(uri, settings).wrap(os.urandom(32), {})
    assert "another-cluster" not in str(caught.value)


def test_namespace_header(
    emulator_backend: Backend, emulator: TransitEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", emulator.root_token)
    emulator_backend.admin.adapter.post("/v1/sys/namespaces/team")
    name = unique("ns")
    emulator.create_key(name, namespace="team")
    uri = emulator_backend.uri(name)
    with pytest.raises(KeyNotFoundError):  # not in the root namespace
        VaultTransitProvider()(uri, emulator_backend.settings()).wrap(os.urandom(32), {})
    _round_trip(VaultTransitProvider(), uri, emulator_backend.settings(namespace="team"))
    monkeypatch.setenv("VAULT_NAMESPACE", "team")
    _round_trip(VaultTransitProvider(), uri, emulator_backend.settings())
    assert {c.namespace for c in emulator.calls if c.operation == "encrypt"} == {"team"}


def test_mount_with_several_segments(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", backend.root_token)
    mount = f"team/{unique('transit')}"
    backend.admin.sys.enable_secrets_engine("transit", path=mount)
    name = unique("k")
    backend.admin.secrets.transit.create_key(name, mount_point=mount)
    _round_trip(VaultTransitProvider(), backend.uri(name, mount=mount), backend.settings())


def test_tls_with_ca_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = make_tls(tmp_path / "tls")
    server = TransitEmulator(tls=tls).start()
    try:
        monkeypatch.setenv("VAULT_TOKEN", server.root_token)
        server.create_key("tls-key")
        uri = f"vault-transit:{server.address}/transit/keys/tls-key"
        quick = {"retry_total": 0}
        with pytest.raises(ProviderUnavailableError) as caught:
            VaultTransitProvider()(uri, quick).wrap(os.urandom(32), {})
        assert "set ca_bundle" in str(caught.value)
        _round_trip(VaultTransitProvider(), uri, {**quick, "ca_bundle": str(tls.ca)})
        monkeypatch.setenv("VAULT_CACERT", str(tls.ca))
        _round_trip(VaultTransitProvider(), uri, quick)
    finally:
        server.stop()


def test_no_token_in_messages_reprs_or_logs(
    emulator_backend: Backend,
    emulator: TransitEmulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Even a server that echoes the token back in its errors cannot put it in ours."""
    name = emulator_backend.create_key()
    token = emulator.token_for((f"transit/keys/{name}", "read"))  # may read, not encrypt
    monkeypatch.setenv("VAULT_TOKEN", token)
    emulator.echo_token_in_errors = True
    role_id, secret_id = emulator_backend.approle()
    caplog.set_level(logging.DEBUG)
    provider = VaultTransitProvider()
    kek = provider(emulator_backend.uri(name), emulator_backend.settings())
    texts = [repr(kek), repr(provider)]
    with pytest.raises(AccessDeniedError) as denied:
        kek.wrap(os.urandom(32), CONTEXT)
    texts.append(str(denied.value))
    monkeypatch.setenv("VAULT_TOKEN", "hvs.forged-token-value")
    with pytest.raises(AccessDeniedError) as forged:
        provider(emulator_backend.uri(name), emulator_backend.settings()).wrap(b"k" * 32, {})
    texts.append(str(forged.value))
    approle = emulator_backend.settings(auth="approle", role_id=role_id, secret_id=secret_id)
    login_kek = provider(emulator_backend.uri(name), approle)
    login_kek.unwrap(login_kek.wrap(b"d" * 32, {}), {})
    texts += [repr(login_kek), caplog.text]
    assert "permission denied" in texts[2]
    assert "<redacted>" in texts[2]
    issued = [t for t in emulator.tokens if t != emulator.root_token]
    for text in texts:
        for secret in (token, "hvs.forged-token-value", secret_id, *issued):
            assert secret not in text


def test_redirects_are_not_followed(
    emulator_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redirect would carry the token to the host it names: it is refused, not followed."""
    import http.server
    import threading

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"{emulator_backend.address}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = emulator_backend.create_key()
        uri = f"vault-transit:http://127.0.0.1:{server.server_address[1]}/transit/keys/{name}"
        monkeypatch.setenv("VAULT_TOKEN", emulator_backend.root_token)
        with pytest.raises(ProviderError) as caught:
            VaultTransitProvider()(uri, emulator_backend.settings()).wrap(os.urandom(32), {})
        assert "redirect" in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()
