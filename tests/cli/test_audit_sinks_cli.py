"""Audit sinks through the command line: ``KMSENVELOPE_AUDIT_SINKS`` and ``[audit] sinks``, a
failing sink (exit 12, nothing written), best effort, bad settings (exit 2), ``config show``,
and a real syslog socket."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_support import run

from kmsenvelope.format.header import encode_context
from kmsenvelope.local import Keystore

CONTEXT = {"app": "billing", "tenant": "acme-secret-tenant"}
CONTEXT_ARGS = [arg for k, v in CONTEXT.items() for arg in ("--context", f"{k}={v}")]


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_line_error(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    text = proc.stderr.decode()
    assert proc.returncode == code, text
    assert text.startswith("kmsenvelope: error:"), text
    assert text.count("\n") == 1, text
    assert "Traceback" not in text
    return text


@pytest.fixture
def main_key(keystore: Keystore) -> str:
    keystore.create_key("main")
    return "local:main"


def round_trip(tmp_path: Path, key: str) -> None:
    plain, sealed, back = tmp_path / "plain", tmp_path / "sealed", tmp_path / "back"
    plain.write_bytes(b"card data")
    enc = run("encrypt", "-i", str(plain), "-o", str(sealed), "--to", key, *CONTEXT_ARGS)
    assert enc.returncode == 0, enc.stderr.decode()
    dec = run("decrypt", "-i", str(sealed), "-o", str(back), *CONTEXT_ARGS)
    assert dec.returncode == 0, dec.stderr.decode()
    assert back.read_bytes() == b"card data"


def check_round_trip_events(log: Path) -> None:
    wrap, unwrap = events(log)
    digest = hashlib.sha256(encode_context(CONTEXT)).hexdigest()
    assert (wrap["operation"], unwrap["operation"]) == ("wrap", "unwrap")
    for event in (wrap, unwrap):
        assert event["provider"] == "local"
        assert event["outcome"] == "ok"
        assert event["key_id"].startswith("local:main")
        assert event["context_sha256"] == digest
        assert "error" not in event
    assert "acme-secret-tenant" not in log.read_text()


def test_sinks_from_the_environment(
    main_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SINKS", f"jsonl:{log}")
    round_trip(tmp_path, main_key)
    check_round_trip_events(log)
    assert os.stat(log).st_mode & 0o777 == 0o600


def test_sinks_from_the_config_file(
    main_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(f'[audit]\nsinks = ["jsonl:{log}"]\naudit_sync = "always"\n')
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(config))
    round_trip(tmp_path, main_key)
    check_round_trip_events(log)


def test_a_failed_attempt_is_recorded_with_its_error_class(
    main_key: str, keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    sealed = run("encrypt", "--to", main_key, stdin=b"x").stdout
    keystore.set_enabled("main", False)
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SINKS", f"jsonl:{log}")
    proc = run("decrypt", stdin=sealed)
    assert proc.returncode == 10, proc.stderr.decode()  # key disabled
    (event,) = events(log)
    assert (event["operation"], event["outcome"]) == ("unwrap", "error")
    assert event["error"] == "KeyDisabledError"


def test_a_failing_sink_fails_the_command_with_exit_12(
    main_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = run("encrypt", "--to", main_key, stdin=b"secret plaintext").stdout
    log = tmp_path / "missing" / "audit.jsonl"
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SINKS", f"jsonl:{log}")
    out = tmp_path / "out"
    enc = run("encrypt", "--to", main_key, "-o", str(out), stdin=b"x")
    assert f"audit sink jsonl:{log} failed" in one_line_error(enc, 12)
    assert not out.exists()
    dec = run("decrypt", "-o", str(out), stdin=sealed)
    one_line_error(dec, 12)
    assert not out.exists()
    piped = run("decrypt", stdin=sealed)
    one_line_error(piped, 12)
    assert piped.stdout == b""  # the data key whose unwrap was not recorded is never used


def test_a_fifo_sink_is_refused_not_blocked_on(
    main_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    os.mkfifo(log)
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SINKS", f"jsonl:{log}")
    text = one_line_error(run("encrypt", "--to", main_key, stdin=b"x"), 12)
    assert "not a regular file" in text


def test_best_effort_lets_the_command_succeed(
    main_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "missing" / "audit.jsonl"
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SINKS", f"jsonl:{log}")
    monkeypatch.setenv("KMSENVELOPE_AUDIT_BEST_EFFORT", "true")
    enc = run("encrypt", "--to", main_key, stdin=b"x")
    assert enc.returncode == 0, enc.stderr.decode()
    dec = run("-v", "decrypt", stdin=enc.stdout)
    assert dec.returncode == 0
    assert dec.stdout == b"x"
    assert f"audit sink jsonl:{log} failed" in dec.stderr.decode()  # the warning, with -v


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ('[audit]\nsinks = ["kafka:topic"]\n', ":2: key 'audit.sinks': unknown audit sink kind"),
        ('audit_sync = "always"\n[audit]\naudit_sync = "batch"\n', ":1: key 'audit_sync'"),
    ],
)
def test_bad_audit_config_is_exit_2_naming_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, needle: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config)
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(path))
    text = one_line_error(run("encrypt", "--to", "local:main", stdin=b"x"), 2)
    assert f"{path}{needle}" in text


def test_bad_audit_environment_is_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SYNC", "sometimes")
    text = one_line_error(run("encrypt", "--to", "local:main", stdin=b"x"), 2)
    assert "KMSENVELOPE_AUDIT_SYNC" in text


def test_config_show_prints_the_audit_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SINKS", f"jsonl:{tmp_path}/a.jsonl,syslog")
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SYNC", "always")
    proc = run("config", "show")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["audit"] == {
        "sinks": [f"jsonl:{tmp_path}/a.jsonl", "syslog"],
        "audit_sync": "always",
        "best_effort": False,
    }


# -- syslog: a real datagram socket where the C library looks for /dev/log --------------------

NAMESPACE = r"""set -e
stage="$1"; sock="$2"; shift 2
mount --bind /dev "$stage"
mount -t tmpfs tmpfs /dev
for name in null zero urandom random tty; do ln -s "$stage/$name" "/dev/$name"; done
ln -s "$sock" /dev/log
exec "$@"
"""


def in_private_dev(tmp_path: Path, sock: Path, *command: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` with /dev/log leading to ``sock``, in a private mount namespace (the
    machine's /dev is not touched)."""
    stage = tmp_path / "dev-stage"
    stage.mkdir()
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE, "sh"]
    return subprocess.run(
        [*unshare, str(stage), str(sock), *command],
        capture_output=True,
        timeout=120,
    )


def can_use_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not can_use_namespaces(), reason="needs unshare --mount (root)")
def test_syslog_sink_sends_one_json_line_per_event(
    main_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "log"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock))
    listener.settimeout(10)
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SINKS", "syslog")
    proc = in_private_dev(
        tmp_path,
        sock,
        sys.executable,
        "-m",
        "kmsenvelope",
        "encrypt",
        "--to",
        main_key,
        "-o",
        str(tmp_path / "sealed"),
        "-i",
        os.devnull,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    message = listener.recv(65536).decode()
    listener.close()
    priority, _, rest = message.partition(">")
    assert priority == "<38"  # facility auth (4 * 8) + severity info (6)
    event = json.loads(rest[rest.index("{") :])
    assert (event["operation"], event["provider"], event["outcome"]) == ("wrap", "local", "ok")
