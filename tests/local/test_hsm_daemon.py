"""The local HSM as its own process: clients use keys through ``kmsenvelope hsm serve`` without a
passphrase or a readable keystore; envelopes interoperate with the in-process provider; admin
needs ``--admin-uid``; a daemon that stops is a clean "provider unavailable" error and loses no
acknowledged audit record."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
from pathlib import Path

import pytest
from hsm_support import Daemon
from local_support import PASSPHRASE, assert_cli_error, run_cli

import kmsenvelope
from kmsenvelope import Engine, load_config
from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDisabledError,
    ProviderUnavailableError,
)
from kmsenvelope.local import Keystore
from kmsenvelope.local.remote import RemoteLocalKEK

CONTEXT = {"tenant": "acme"}


@pytest.fixture
def store(keystore_dir: Path) -> Path:
    """A keystore with an AES key ``k`` and an RSA key ``r``."""
    ks = Keystore.open(keystore_dir, PASSPHRASE)
    ks.create_key("k")
    ks.create_key("r", "rsa3072")
    ks.close()
    return keystore_dir


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return run / "hsm.sock"


def _client_env(monkeypatch: pytest.MonkeyPatch, sock: Path) -> None:
    """This process becomes a client that knows no passphrase and no keystore."""
    monkeypatch.delenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", raising=False)
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", "/nonexistent/keystore")
    monkeypatch.setenv("KMSENVELOPE_HSM_SOCKET", str(sock))


def _engine() -> Engine:
    """An engine configured from this process's environment (as an application's would be)."""
    return Engine(config=load_config())


def test_client_without_passphrase_or_keystore_encrypts_and_decrypts(
    store: Path, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Daemon(store, sock):
        _client_env(monkeypatch, sock)
        engine = _engine()
        kek = engine.open_key("local:k")
        assert isinstance(kek, RemoteLocalKEK)
        for uri in ("local:k", "local:r"):
            blob = engine.encrypt(b"hello daemon", to=[uri], context=CONTEXT)
            info = kmsenvelope.inspect_envelope(blob)
            assert [r.key_id for r in info.recipients] == [f"{uri}/1"]
            assert engine.decrypt(blob, context=CONTEXT) == b"hello daemon"


def test_cli_through_the_daemon_with_config_socket(store: Path, sock: Path, tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(f'[providers.local]\nsocket = "{sock}"\nkeystore = "/nonexistent"\n')
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"secret report\n" * 1000)
    env = {"KMSENVELOPE_CONFIG": str(config), "KMSENVELOPE_KEYSTORE_PASSPHRASE": ""}
    with Daemon(store, sock):
        enc = run_cli(
            "encrypt", "--to", "local:k", "-o", str(tmp_path / "x.kenv"), str(plain), env=env
        )
        assert enc.returncode == 0, enc.stderr
        dec = run_cli(
            "decrypt", "-o", str(tmp_path / "back.txt"), str(tmp_path / "x.kenv"), env=env
        )
        assert dec.returncode == 0, dec.stderr
    assert (tmp_path / "back.txt").read_bytes() == plain.read_bytes()


def test_envelopes_interoperate_with_the_in_process_provider(
    store: Path, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_process = _engine().encrypt(b"made in process", to=["local:k"], context=CONTEXT)
    with Daemon(store, sock):
        _client_env(monkeypatch, sock)
        through = _engine()
        assert through.decrypt(in_process, context=CONTEXT) == b"made in process"
        # one recipient each: an RSA stanza (no AAD) must not mask an AES one bound wrongly
        made_remote = [
            through.encrypt(b"made remotely", to=[uri], context=CONTEXT)
            for uri in ("local:k", "local:r")
        ]
    monkeypatch.delenv("KMSENVELOPE_HSM_SOCKET")
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", str(store))
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", PASSPHRASE)
    for blob in made_remote:
        assert _engine().decrypt(blob, context=CONTEXT) == b"made remotely"


def test_wrong_context_and_disabled_key_are_the_providers_errors(
    store: Path, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Daemon(store, sock, ["--admin-uid", str(os.geteuid())]):
        _client_env(monkeypatch, sock)
        kek = _engine().open_key("local:k")
        wrapped = kek.wrap(os.urandom(32), CONTEXT)
        with pytest.raises(kmsenvelope.errors.UnwrapError):
            kek.unwrap(wrapped, {"tenant": "other"})
        assert run_cli("keys", "disable", "k").returncode == 0
        with pytest.raises(KeyDisabledError):
            kek.wrap(os.urandom(32), CONTEXT)


def test_a_daemon_that_is_not_running_is_provider_unavailable(
    sock: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _client_env(monkeypatch, sock)
    with pytest.raises(ProviderUnavailableError, match="not running"):
        _engine().encrypt(b"x", to=["local:k"])
    plain = tmp_path / "p"
    plain.write_bytes(b"x")
    proc = run_cli("encrypt", "--to", "local:k", "-o", str(tmp_path / "o"), str(plain))
    assert_cli_error(proc, 7, "not running", str(sock))
    assert not (tmp_path / "o").exists()


def test_a_uid_not_allowed_is_refused(
    store: Path, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = 4242 if os.geteuid() != 4242 else 4243
    with Daemon(store, sock, ["--allow-uid", str(other)]) as daemon:
        _client_env(monkeypatch, sock)
        with pytest.raises(AccessDeniedError, match=f"uid {os.geteuid()} is not allowed"):
            _engine().encrypt(b"x", to=["local:k"])
    assert f"uid {os.geteuid()}" in daemon.stderr


def test_administration_needs_admin_uid(store: Path, sock: Path, tmp_path: Path) -> None:
    env = {"KMSENVELOPE_HSM_SOCKET": str(sock), "KMSENVELOPE_KEYSTORE_PASSPHRASE": ""}
    Keystore.open(store, PASSPHRASE).rotate("r")  # version 1 of r is destroyable
    with Daemon(store, sock):
        for command in (
            ["keys", "create", "new"],
            ["keys", "rotate", "k"],
            ["keys", "disable", "k"],
            ["keys", "enable", "k"],
            ["keys", "destroy", "r", "--version", "1", "--yes"],
        ):
            proc = run_cli(*command, env=env)
            assert_cli_error(proc, 8, "may not administer keys")
        backup = run_cli(
            "keys",
            "backup",
            str(tmp_path / "b.json"),
            env={**env, "KMSENVELOPE_BACKUP_PASSPHRASE": "backup pass 1"},
        )
        assert_cli_error(backup, 8, "may not administer keys")
        listed = run_cli("keys", "list", "--json", env=env)  # metadata: any allowed peer
        assert listed.returncode == 0, listed.stderr
        assert {k["name"] for k in json.loads(listed.stdout)} == {"k", "r"}
    assert not (tmp_path / "b.json").exists()
    keys = {k.name: k for k in Keystore.open(store, PASSPHRASE).list_keys()}
    assert set(keys) == {"k", "r"}
    assert keys["k"].current == 1
    assert keys["k"].enabled
    assert [v.state for v in keys["r"].versions] == ["active", "active"]


def test_an_admin_uid_administers_keys_through_the_daemon(
    store: Path, sock: Path, tmp_path: Path
) -> None:
    env = {"KMSENVELOPE_HSM_SOCKET": str(sock), "KMSENVELOPE_KEYSTORE_PASSPHRASE": ""}
    with Daemon(store, sock, ["--admin-uid", str(os.geteuid())]):
        assert run_cli("keys", "create", "new", env=env).returncode == 0
        assert run_cli("keys", "rotate", "new", env=env).returncode == 0
        assert run_cli("keys", "disable", "new", env=env).returncode == 0
        assert run_cli("keys", "enable", "new", env=env).returncode == 0
        destroyed = run_cli("keys", "destroy", "new", "--version", "1", "--yes", env=env)
        assert destroyed.returncode == 0, destroyed.stderr
        backup = tmp_path / "backup.json"
        made = run_cli(
            "keys",
            "backup",
            str(backup),
            env={**env, "KMSENVELOPE_BACKUP_PASSPHRASE": "backup pass 1"},
        )
        assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    new = {k.name: k for k in Keystore.open(store, PASSPHRASE).list_keys()}["new"]
    assert new.current == 2
    assert new.enabled
    assert [v.state for v in new.versions] == ["destroyed", "active"]
    restored = tmp_path / "restored"
    proc = run_cli(
        "keys",
        "restore",
        str(backup),
        env={
            "KMSENVELOPE_KEYSTORE": str(restored),
            "KMSENVELOPE_BACKUP_PASSPHRASE": "backup pass 1",
            "KMSENVELOPE_KEYSTORE_PASSPHRASE": "another passphrase",
        },
    )
    assert proc.returncode == 0, proc.stderr
    names = {k.name for k in Keystore.open(restored, "another passphrase").list_keys()}
    assert names == {"k", "r", "new"}


def test_daemon_audit_records_the_peer(
    store: Path, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Daemon(store, sock):
        _client_env(monkeypatch, sock)
        blob = _engine().encrypt(b"x", to=["local:k"], context=CONTEXT)
        _engine().decrypt(blob, context=CONTEXT)
    entries = [json.loads(line) for line in (store / "audit.log").read_text().splitlines()]
    used = [e for e in entries if e["op"] in ("wrap", "unwrap")]
    assert [e["op"] for e in used] == ["wrap", "unwrap"]
    for entry in used:
        assert entry["peer_uid"] == os.geteuid()
        assert entry["peer_pid"] == os.getpid()
        assert entry["pid"] != os.getpid()  # written by the daemon
    assert Keystore.open(store, PASSPHRASE).verify_audit().entries == len(entries)


def test_sigterm_stops_cleanly_and_removes_the_socket(store: Path, sock: Path) -> None:
    daemon = Daemon(store, sock).wait_ready()
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert daemon.stop(signal.SIGTERM) == 0, daemon.stderr
    assert not sock.exists()
    assert "Traceback" not in daemon.stderr


def test_killing_the_daemon_mid_stream_is_clean_and_loses_no_acknowledged_record(
    store: Path, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(store, sock).wait_ready()
    _client_env(monkeypatch, sock)
    kek = _engine().open_key("local:k")
    acknowledged = 0
    failure: list[BaseException] = []
    started = threading.Event()

    def stream() -> None:
        nonlocal acknowledged
        try:
            while True:
                kek.wrap(os.urandom(32), CONTEXT)
                acknowledged += 1
                if acknowledged == 200:
                    started.set()
        except BaseException as exc:
            failure.append(exc)
            started.set()

    worker = threading.Thread(target=stream)
    worker.start()
    assert started.wait(60)
    daemon.kill()
    worker.join(60)
    assert len(failure) == 1, failure
    assert isinstance(failure[0], ProviderUnavailableError), failure
    assert "local HSM daemon" in str(failure[0])
    ours = [
        json.loads(line)
        for line in (store / "audit.log").read_text().splitlines()
        if line.endswith("}") and json.loads(line).get("peer_pid") == os.getpid()
    ]
    assert len([e for e in ours if e["op"] == "wrap" and e["outcome"] == "ok"]) >= acknowledged
    report = Keystore.open(store, PASSPHRASE).verify_audit()
    assert report.entries >= acknowledged
    # the daemon comes back: the same client reconnects on its next call
    with Daemon(store, sock):
        assert kek.unwrap(kek.wrap(b"\x01" * 32, CONTEXT), CONTEXT) == b"\x01" * 32


def test_pipelined_threads_share_one_connection(
    store: Path, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Daemon(store, sock):
        _client_env(monkeypatch, sock)
        kek = _engine().open_key("local:k")
        results: dict[int, bytes] = {}
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(50):
                    dek = bytes([n]) * 31 + bytes([i])
                    ctx = {"n": str(n), "i": str(i)}
                    assert kek.unwrap(kek.wrap(dek, ctx), ctx) == dek
                results[n] = b"ok"
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(results) == 8


def test_passphrase_never_on_the_command_line(store: Path, sock: Path) -> None:
    read, write = os.pipe()
    os.write(write, PASSPHRASE.encode() + b"\n")
    os.close(write)
    with Daemon(store, sock, ["--passphrase-fd", str(read)], passphrase=None, pass_fds=[read]) as d:
        os.close(read)
        cmdline = Path(f"/proc/{d.process.pid}/cmdline").read_bytes()
        assert PASSPHRASE.encode() not in cmdline
        environ = Path(f"/proc/{d.process.pid}/environ").read_bytes()
        assert PASSPHRASE.encode() not in environ


def _impostor(directory: Path, uid: int) -> tuple[Path, int, int]:
    """A process running as ``uid`` listening at ``directory``/hsm.sock that reports how many
    bytes a client sent it (through a pipe): (socket path, pid, read end of the pipe)."""
    path = directory / "hsm.sock"
    read, write = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, listen, count what arrives
        try:
            os.close(read)
            os.close(ready_r)
            os.setgid(uid)
            os.setuid(uid)
            import socket as sockets

            listener = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(4)
            os.write(ready_w, b"x")
            listener.settimeout(20)
            conn, _ = listener.accept()
            conn.settimeout(3)
            received = 0
            try:
                while chunk := conn.recv(65536):
                    received += len(chunk)
            except OSError:
                pass
            os.write(write, str(received).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    return path, pid, read


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a listener as another uid")
@pytest.mark.parametrize("configured", [False, True])
def test_a_process_that_is_not_the_daemon_gets_no_data_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    import tempfile

    shared = Path(tempfile.mkdtemp(dir="/tmp"))  # owned by root; anyone may create in it
    shared.chmod(0o777)
    try:
        path, pid, read = _impostor(shared, 65534)
        _client_env(monkeypatch, path)
        if configured:  # told that uid 65534 is the daemon: then it is talked to
            config = tmp_path / "c.toml"
            config.write_text("[providers.local]\ndaemon_uid = 65534\n")
            monkeypatch.setenv("KMSENVELOPE_CONFIG", str(config))
        engine = _engine()
        if configured:
            kek = engine.open_key("local:k")
            kek._client._timeout = 1  # type: ignore[attr-defined]
            with pytest.raises(kmsenvelope.KmsEnvelopeError):  # it never answers
                engine.encrypt(b"secret", to=[kek])
        else:
            with pytest.raises(AccessDeniedError, match="runs as uid 65534, not as the HSM daemon"):
                engine.encrypt(b"secret", to=["local:k"])
        kmsenvelope.local.remote.client_for(path).close()
        os.waitpid(pid, 0)
        received = int(os.read(read, 32) or b"0")
        os.close(read)
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)
    if configured:
        assert received > 32  # a wrap request, data key included, was sent
    else:
        assert received == 0  # refused before a single byte was sent


def test_a_relative_socket_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _client_env(monkeypatch, Path("hsm.sock"))
    monkeypatch.setenv("KMSENVELOPE_HSM_SOCKET", "run/hsm.sock")
    with pytest.raises(kmsenvelope.ConfigError, match="absolute path"):
        _engine().encrypt(b"x", to=["local:k"])


def test_passphrase_fd_stops_at_the_newline_while_the_writer_keeps_it_open(
    store: Path, sock: Path
) -> None:
    read, write = os.pipe()
    os.write(write, PASSPHRASE.encode() + b"\n")  # the writer never closes: read to the newline
    try:
        with Daemon(store, sock, ["--passphrase-fd", str(read)], passphrase=None, pass_fds=[read]):
            os.close(read)
    finally:
        os.close(write)
