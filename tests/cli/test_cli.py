"""The command line, driven as a user would: a real process, files, pipes and exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmsenvelope.cli.progress import ProgressBar


def run(
    *args: str,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode()


def assert_one_line_error(proc: subprocess.CompletedProcess[bytes], code: int) -> None:
    text = err(proc)
    assert proc.returncode == code, text
    assert "Traceback" not in text
    assert text.startswith("kmsenvelope: error:"), text
    assert text.count("\n") == 1, text


@pytest.fixture
def cli_keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A keystore created by the CLI itself (default KDF), selected by the environment."""
    path = tmp_path / "ks"
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", str(path))
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", "cli passphrase")
    proc = run("keys", "create", "main")
    assert proc.returncode == 0, err(proc)
    assert proc.stdout.decode().strip() == "local:main"
    return path


def test_file_round_trip_inspect_and_chunks(cli_keystore: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.bin"
    data = os.urandom(3 * 4096 + 17)
    plain.write_bytes(data)
    enc = tmp_path / "plain.env"
    proc = run(
        "encrypt",
        "-i",
        str(plain),
        "-o",
        str(enc),
        "--to",
        "local:main",
        "--context",
        "app=billing",
        "--context",
        "tenant=42",
        "--chunk-size",
        "4096",
    )
    assert proc.returncode == 0, err(proc)
    assert oct(enc.stat().st_mode & 0o777) == "0o600"
    info = json.loads(run("inspect", str(enc)).stdout)
    assert info["format_version"] == 1
    assert info["chunk_size"] == 4096
    assert info["payload_length"] == len(data)
    assert info["context"] == {"app": "billing", "tenant": "42"}
    assert info["recipients"][0]["key_id"] == "local:main/1"
    assert info["recipients"][0]["provider"] == "local"
    assert info["recipients"][0]["algorithm"] == "AES-256-GCM"
    out = tmp_path / "out.bin"
    proc = run("decrypt", "-i", str(enc), "-o", str(out), "--context", "tenant=42")
    assert proc.returncode == 0, err(proc)
    assert out.read_bytes() == data


def test_stdin_stdout_and_dash(cli_keystore: Path) -> None:
    enc = run("encrypt", "--to", "local:main", stdin=b"piped data")
    assert enc.returncode == 0, err(enc)
    dec = run("decrypt", stdin=enc.stdout)
    assert dec.stdout == b"piped data"
    enc2 = run("encrypt", "-i", "-", "-o", "-", "--to", "local:main", "--armor", stdin=b"x")
    assert enc2.stdout.startswith(b"kmsenv1.")
    assert enc2.stdout.isascii()
    assert run("decrypt", "-i", "-", "-o", "-", stdin=enc2.stdout).stdout == b"x"
    assert json.loads(run("inspect", "-", stdin=enc2.stdout).stdout)["encoding"] == "compact"


def test_empty_input(cli_keystore: Path) -> None:
    enc = run("encrypt", "--to", "local:main", stdin=b"")
    assert enc.returncode == 0
    dec = run("decrypt", stdin=enc.stdout)
    assert dec.returncode == 0
    assert dec.stdout == b""


def test_python_dash_m_and_console_script_agree(cli_keystore: Path) -> None:
    script = Path(sys.executable).with_name("kmsenvelope")
    if not script.exists():
        pytest.skip("console script not installed next to the interpreter")
    a = subprocess.run([str(script), "--version"], capture_output=True, timeout=60)
    b = run("--version")
    assert a.stdout == b.stdout
    assert b.stdout.startswith(b"kmsenvelope ")


def test_failed_decrypt_leaves_no_output_file(cli_keystore: Path, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    enc = run("encrypt", "--to", "local:main", "--chunk-size", "1024", stdin=data).stdout
    tampered = bytearray(enc)
    tampered[-10] ^= 1  # last chunk: every earlier chunk authenticates and is written first
    target = tmp_path / "plain.out"
    proc = run("decrypt", "-o", str(target), stdin=bytes(tampered))
    assert_one_line_error(proc, 3)
    assert "did not authenticate" in err(proc)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if "plain.out" in p.name] == []


def test_truncated_envelope_exit_code(cli_keystore: Path) -> None:
    enc = run("encrypt", "--to", "local:main", "--chunk-size", "64", stdin=b"a" * 500).stdout
    assert_one_line_error(run("decrypt", stdin=enc[:-80]), 3)


def test_not_an_envelope(cli_keystore: Path) -> None:
    proc = run("decrypt", stdin=b"just some text")
    assert_one_line_error(proc, 3)
    assert "not a kmsenvelope envelope" in err(proc)
    assert_one_line_error(run("inspect", "-", stdin=b"nope"), 3)


def test_no_recipient_exit_code_lists_reasons(cli_keystore: Path, tmp_path: Path) -> None:
    enc = run("encrypt", "--to", "local:main", stdin=b"data").stdout
    env = {**os.environ, "KMSENVELOPE_KEYSTORE": str(tmp_path / "empty")}
    proc = run("decrypt", stdin=enc, env=env)
    assert_one_line_error(proc, 4)
    assert "local:main/1" in err(proc)


def test_wrong_passphrase_exit_code(cli_keystore: Path) -> None:
    env = {**os.environ, "KMSENVELOPE_KEYSTORE_PASSPHRASE": "Tr0ub4dor-guess"}
    proc = run("encrypt", "--to", "local:main", stdin=b"x", env=env)
    assert_one_line_error(proc, 11)
    assert "passphrase" in err(proc)
    assert "Tr0ub4dor-guess" not in err(proc)


def test_wrong_context_exit_code(cli_keystore: Path) -> None:
    enc = run("encrypt", "--to", "local:main", "--context", "a=1", stdin=b"x").stdout
    assert_one_line_error(run("decrypt", "--context", "a=2", stdin=enc), 3)


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["encrypt"], 2, "no recipients"),
        (["encrypt", "--to", "local:main", "--context", "novalue"], 2, "KEY=VALUE"),
        (["encrypt", "--to", "local:main", "--chunk-size", "3"], 2, "--chunk-size"),
        (["encrypt", "--to", "nourischeme"], 2, "not a key URI"),
        (["encrypt", "--to", "gcp-kms:projects/p/keys/k"], 5, "no provider is installed"),
        (["encrypt", "--to", "local:no-such-key"], 9, "no such key"),
        (["encrypt", "-i", "/does/not/exist", "--to", "local:main"], 2, "does not exist"),
        (["frobnicate"], 2, "invalid choice"),
        (["keys", "destroy", "main"], 2, "--version"),
        (["keys", "create", "bad name!"], 2, "invalid key name"),
        (["keys", "create", "x", "--type", "des"], 2, "invalid choice"),
        (["--profile", "missing", "config", "show"], 2, "profile 'missing'"),
    ],
)
def test_user_mistakes_are_one_line(
    cli_keystore: Path, args: list[str], code: int, needle: str
) -> None:
    proc = run(*args, stdin=b"data")
    text = err(proc)
    assert proc.returncode == code, text
    assert "Traceback" not in text
    assert needle in text
    assert text.strip().count("\n") == 0, text


def test_keys_lifecycle(cli_keystore: Path) -> None:
    assert run("keys", "create", "rsa", "--type", "rsa3072").returncode == 0
    first = run("encrypt", "--to", "local:main", stdin=b"v1").stdout
    assert run("keys", "rotate", "main").returncode == 0
    second = run("encrypt", "--to", "local:main", stdin=b"v2").stdout
    assert (
        json.loads(run("inspect", "-", stdin=second).stdout)["recipients"][0]["key_id"]
        == "local:main/2"
    )
    listing = json.loads(run("keys", "list", "--json").stdout)
    main = next(k for k in listing if k["name"] == "main")
    assert main["current_version"] == 2
    assert [v["version"] for v in main["versions"]] == [1, 2]
    assert "local:rsa" in run("keys", "list").stdout.decode()

    assert run("keys", "disable", "main").returncode == 0
    assert_one_line_error(run("encrypt", "--to", "local:main", stdin=b"x"), 10)
    disabled = run("decrypt", stdin=first)
    assert disabled.returncode == 10  # every recipient tried failed the same way: key disabled
    assert "disabled" in err(disabled)
    assert run("keys", "enable", "main").returncode == 0
    assert run("decrypt", stdin=first).stdout == b"v1"

    no_terminal = run("keys", "destroy", "main", "--version", "1")  # no tty, no --yes: refused
    assert_one_line_error(no_terminal, 2)
    assert "--yes" in err(no_terminal)
    assert_one_line_error(run("keys", "destroy", "main", "--version", "2", "--yes"), 11)  # current
    assert run("keys", "destroy", "main", "--version", "1", "--yes").returncode == 0
    gone = run("decrypt", stdin=first)
    assert gone.returncode == 10
    assert "destroyed" in err(gone)
    assert run("decrypt", stdin=second).stdout == b"v2"
    assert run("audit", "verify").returncode == 0


def test_backup_restore_cli(cli_keystore: Path, tmp_path: Path) -> None:
    enc = run("encrypt", "--to", "local:main", stdin=b"keep me").stdout
    backup = tmp_path / "backup.json"
    assert run("keys", "backup", str(backup)).returncode == 0
    import shutil

    shutil.rmtree(cli_keystore)
    gone = run("decrypt", stdin=enc)
    assert gone.returncode == 4
    assert "no keystore" in err(gone)
    assert run("keys", "restore", str(backup)).returncode == 0
    assert run("decrypt", stdin=enc).stdout == b"keep me"


def test_providers_and_config_show(cli_keystore: Path) -> None:
    proc = run("providers")
    assert proc.returncode == 0
    assert "local" in proc.stdout.decode()
    assert "kmsenvelope" in proc.stdout.decode()
    shown = json.loads(run("--keystore", "/x/y", "config", "show").stdout)
    assert shown["providers"]["local"]["keystore"] == "/x/y"


def test_keystore_option_overrides_environment(cli_keystore: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-ks"
    assert run("--keystore", str(other), "keys", "create", "elsewhere").returncode == 0
    assert (other / "keys" / "elsewhere.json").exists()
    assert not (cli_keystore / "keys" / "elsewhere.json").exists()


def test_progress_bar_draws_and_finishes() -> None:
    stream = io.StringIO()
    bar = ProgressBar(100 << 20, "encrypting", stream)
    bar._last = -1.0
    bar(50 << 20)
    bar.close()
    text = stream.getvalue()
    assert "encrypting" in text
    assert "50%" in text
    assert text.endswith("\n")


def test_restore_with_wrong_backup_passphrase_creates_nothing(
    cli_keystore: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "b.json"
    assert run("keys", "backup", str(backup)).returncode == 0
    target = tmp_path / "new-keystore"
    env = {**os.environ, "KMSENVELOPE_BACKUP_PASSPHRASE": "not the one"}
    proc = run("--keystore", str(target), "keys", "restore", str(backup), env=env)
    assert_one_line_error(proc, 11)
    assert not target.exists()


def test_global_options_work_after_the_subcommand(tmp_path: Path) -> None:
    """``--keystore`` (and the other global options) may follow the subcommand too."""
    env = {**os.environ, "KMSENVELOPE_KEYSTORE_PASSPHRASE": "long enough passphrase"}
    ks = tmp_path / "after"
    made = run("keys", "create", "late", "--keystore", str(ks), "-q", env=env)
    assert made.returncode == 0, err(made)
    assert (ks / "keys" / "late.json").exists()
    listed = run("keys", "list", "--json", "--keystore", str(ks), env=env)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["late"]
    enc = run("encrypt", "--to", "local:late", "--keystore", str(ks), stdin=b"z", env=env)
    assert run("decrypt", "--keystore", str(ks), stdin=enc.stdout, env=env).stdout == b"z"
    assert run("audit", "verify", "--keystore", str(ks), env=env).returncode == 0
    # The option given before the subcommand still counts when not repeated after it.
    assert run("--keystore", str(ks), "keys", "list", env=env).returncode == 0
