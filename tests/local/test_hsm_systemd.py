"""The daemon under systemd and alongside the rest: socket activation (``LISTEN_FDS``),
``Type=notify`` readiness, rotation through the daemon, and its audit events (with the peer) in
the sinks configured for the daemon."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hsm_support import Daemon
from local_support import PASSPHRASE

import kmsenvelope
from kmsenvelope import Engine, load_config
from kmsenvelope.local import Keystore

CONTEXT = {"app": "billing"}


@pytest.fixture
def store(keystore_dir: Path) -> Path:
    ks = Keystore.open(keystore_dir, PASSPHRASE)
    ks.create_key("k")
    ks.close()
    return keystore_dir


def _serve_env(store: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSENVELOPE_HSM")}
    env.update(
        KMSENVELOPE_KEYSTORE=str(store),
        KMSENVELOPE_KEYSTORE_PASSPHRASE=PASSPHRASE,
        KMSENVELOPE_PLUGINS="local",
        **extra,
    )
    return env


def _client(monkeypatch: pytest.MonkeyPatch, path: Path) -> Engine:
    monkeypatch.delenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", raising=False)
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", "/nonexistent")
    monkeypatch.setenv("KMSENVELOPE_HSM_SOCKET", str(path))
    return Engine(config=load_config())


def test_socket_activation_serves_the_socket_systemd_passed(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    fd = listener.fileno()
    # as systemd does: the socket on fd 3, LISTEN_PID the daemon's own pid, no --socket
    script = 'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@"'
    command = ["sh", "-c", script, "sh", sys.executable, "-m", "kmsenvelope", "hsm", "serve"]
    proc = subprocess.Popen(
        command,
        env=_serve_env(store),
        pass_fds=(3,),
        preexec_fn=(lambda: os.dup2(fd, 3)) if fd != 3 else None,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.close()  # only the daemon holds it now
    try:
        engine = _client(monkeypatch, path)
        deadline = time.monotonic() + 30
        while True:
            try:
                blob = engine.encrypt(b"activated", to=["local:k"], context=CONTEXT)
                break
            except kmsenvelope.ProviderUnavailableError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert engine.decrypt(blob, context=CONTEXT) == b"activated"
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "the socket systemd passed" in err
    assert path.exists()  # systemd's socket: the daemon does not remove what it did not make


def test_type_notify_gets_ready_once_listening(store: Path, tmp_path: Path) -> None:
    notify = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify))
    receiver.settimeout(30)
    sock = tmp_path / "hsm.sock"
    with Daemon(store, sock, env={"NOTIFY_SOCKET": str(notify)}):
        assert receiver.recv(64) == b"READY=1"
        assert sock.exists()
    receiver.close()


def test_rotation_through_the_daemon_moves_to_the_current_version(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "hsm.sock"
    with Daemon(store, sock):
        engine = _client(monkeypatch, sock)
        blob = engine.encrypt(b"old version", to=["local:k"], context=CONTEXT)
        Keystore.open(store, PASSPHRASE).rotate("k")  # by the daemon's user, directly
        monkeypatch.setattr(kmsenvelope, "_default", engine)
        rotated = kmsenvelope.rewrap(blob, rotate=True)
        info = kmsenvelope.inspect_envelope(rotated)
        assert [r.key_id for r in info.recipients] == ["local:k/2"]
        assert engine.decrypt(rotated, context=CONTEXT) == b"old version"


def test_daemon_sends_events_with_the_peer_to_its_own_sinks(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "hsm.sock"
    events = tmp_path / "daemon-audit.jsonl"
    with Daemon(store, sock, env={"KMSENVELOPE_AUDIT_SINKS": f"jsonl:{events}"}):
        engine = _client(monkeypatch, sock)
        blob = engine.encrypt(b"x", to=["local:k"], context=CONTEXT)
        engine.decrypt(blob, context=CONTEXT)
        with pytest.raises(kmsenvelope.errors.UnwrapError):
            engine.open_key("local:k").unwrap(
                kmsenvelope.inspect_envelope(blob).recipients[0], {"app": "other"}
            )
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["operation"], e["outcome"]) for e in lines] == [
        ("wrap", "ok"),
        ("unwrap", "ok"),
        ("unwrap", "error"),
    ]
    assert lines[2]["error"] == "UnwrapError"
    for event in lines:
        assert event["provider"] == "local"
        assert event["peer_uid"] == os.geteuid()
        assert event["peer_pid"] == os.getpid()
        assert event["key_id"].startswith("local:k")
