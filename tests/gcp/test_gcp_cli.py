"""The Cloud KMS provider through the command line, as a user runs it: ``python -m kmsenvelope``
with ``KMSENVELOPE_PLUGINS=local,gcp-kms`` against the emulator (settings from the config file's
``[providers.gcp-kms]`` table or from ``KMSENVELOPE_PROVIDERS__GCP_KMS__*``).

Round trip; each provider alone opening an envelope while the other is down; ``rewrap --rotate``
moving stanzas to the primary version; a folder migrated local -> gcp-kms -> local with the
payloads untouched; the REST transport; one-line errors with the documented exit codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kms_emulator import KmsEmulator

from kmsenvelope import hazmat, inspect_envelope
from kmsenvelope.cli import main
from kmsenvelope.local import Keystore

FAST = {"retry_initial": 0.01, "retry_maximum": 0.05, "retry_deadline": 1.0}


def _toml(settings: dict[str, Any]) -> str:
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())


class Cli:
    """A working directory with a kmsenvelope.toml, and the CLI run in it."""

    def __init__(self, root: Path, emulator: KmsEmulator) -> None:
        self.root = root
        self.emulator = emulator
        self.config = root / "kmsenvelope.toml"
        self.env = {
            **os.environ,
            "KMSENVELOPE_PLUGINS": "local,gcp-kms",
            "KMSENVELOPE_CONFIG": str(self.config),
        }
        self.write({"emulator_host": emulator.grpc_host, **FAST})

    def write(self, gcp: dict[str, Any]) -> None:
        allowed = '["local:*", "gcp-kms:projects/test-project/*"]'
        self.config.write_text(f"allowed_keys = {allowed}\n\n[providers.gcp-kms]\n{_toml(gcp)}\n")

    def __call__(
        self, *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "kmsenvelope", *map(str, args)],
            env={**self.env, **(env or {})},
            cwd=self.root,
            capture_output=True,
            timeout=120,
            check=False,
        )

    @staticmethod
    def recipients(path: Path) -> list[str]:
        """The recorded key ids (read in process: ``inspect`` contacts no provider)."""
        return [r.key_id for r in inspect_envelope(path.read_bytes()).recipients]


@pytest.fixture
def cli(tmp_path: Path, emulator: KmsEmulator, keystore: Keystore) -> Cli:
    keystore.create_key("app")
    root = tmp_path / "cli"
    root.mkdir()
    return Cli(root, emulator)


@pytest.fixture
def gcp_key(make_key) -> str:
    return make_key()


NO_KEYSTORE = {"KMSENVELOPE_KEYSTORE": "/nonexistent/keystore"}


def payload_of(envelope: bytes) -> bytes:
    _header, size = hazmat.parse_header(envelope)
    return envelope[size:]


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    message = proc.stderr.decode()
    assert message.startswith("kmsenvelope: error: "), message
    assert message.count("\n") == 1, message
    assert "Traceback" not in message
    return message


def test_round_trip_and_each_provider_alone(cli: Cli, gcp_key: str, emulator: KmsEmulator):
    plain = cli.root / "plain.txt"
    plain.write_bytes(b"quarterly numbers\n" * 100)
    sealed = cli.root / "plain.kmsenv"
    made = cli("encrypt", "--to", "local:app", "--to", gcp_key, "--context", "tenant=t1",
               "-i", plain, "-o", sealed)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert cli.recipients(sealed) == ["local:app/1", f"{gcp_key}/cryptoKeyVersions/1"]

    both = cli("decrypt", "-i", sealed, "--context", "tenant=t1")
    assert both.returncode == 0, both.stderr
    assert both.stdout == plain.read_bytes()

    # The local keystore unavailable: Cloud KMS alone opens it (with the context as AAD).
    decrypts_before = emulator.calls["Decrypt"]
    gcp_alone = cli("decrypt", "-i", sealed, "--context", "tenant=t1", env=NO_KEYSTORE)
    assert gcp_alone.returncode == 0, gcp_alone.stderr
    assert gcp_alone.stdout == plain.read_bytes()
    assert emulator.calls["Decrypt"] == decrypts_before + 1

    # Cloud KMS unreachable: the local key alone opens it.
    emulator.stop()
    local_alone = cli("decrypt", "-i", sealed, "--context", "tenant=t1")
    assert local_alone.returncode == 0, local_alone.stderr
    assert local_alone.stdout == plain.read_bytes()

    # Both down: one line naming both recipients, no traceback.
    neither = cli("decrypt", "-i", sealed, "--context", "tenant=t1", env=NO_KEYSTORE)
    assert neither.returncode == 4
    message = one_line_error(neither)
    assert "local:app/1" in message
    assert f"{gcp_key}/cryptoKeyVersions/1" in message


def test_settings_from_the_environment_and_rest_transport(cli: Cli, gcp_key: str, emulator):
    cli.write({})  # nothing in the file: everything from KMSENVELOPE_PROVIDERS__GCP_KMS__*
    env = {
        "KMSENVELOPE_PROVIDERS__GCP_KMS__EMULATOR_HOST": emulator.rest_host,
        "KMSENVELOPE_PROVIDERS__GCP_KMS__TRANSPORT": "rest",
        "KMSENVELOPE_PROVIDERS__GCP_KMS__RETRY_DEADLINE": "1",
    }
    sealed = cli.root / "rest.txt"
    source = cli.root / "in.txt"
    source.write_bytes(b'{"card": "4111"}')
    made = cli("encrypt", "--to", gcp_key, "--armor", "-i", source, "-o", sealed, env=env)
    assert made.returncode == 0, made.stderr
    assert sealed.read_bytes().startswith(b"kmsenv1.")
    opened = cli("decrypt", "-i", sealed, env={**env, **NO_KEYSTORE})
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == b'{"card": "4111"}'
    assert emulator.calls["Encrypt"] == 1
    assert emulator.calls["Decrypt"] == 1


def test_rewrap_rotate_moves_to_the_primary_version(cli: Cli, gcp_key: str, emulator):
    files = []
    for index in range(2):
        path = cli.root / f"f{index}.kmsenv"
        source = cli.root / f"f{index}.txt"
        source.write_bytes(f"file {index}".encode())
        made = cli("encrypt", "--to", gcp_key, "--to", "local:app", "-i", source, "-o", path)
        assert made.returncode == 0, made.stderr
        files.append(path)
    name = gcp_key.removeprefix("gcp-kms:")
    emulator.add_version(name)  # rotation: version 2 becomes primary
    payloads = [payload_of(p.read_bytes()) for p in files]

    done = cli("rewrap", *files, "--rotate")
    assert done.returncode == 0, done.stderr
    for path, payload in zip(files, payloads, strict=True):
        assert cli.recipients(path) == [f"{gcp_key}/cryptoKeyVersions/2", "local:app/1"]
        assert payload_of(path.read_bytes()) == payload  # the DEK was re-wrapped, nothing else
    before = [p.read_bytes() for p in files]
    encrypts = emulator.calls["Encrypt"]
    again = cli("rewrap", *files, "--rotate")
    assert again.returncode == 0, again.stderr
    assert [p.read_bytes() for p in files] == before  # already at the primary: untouched,
    assert emulator.calls["Encrypt"] == encrypts  # and not even wrapped again

    # The old version disabled: the re-wrapped envelopes open through Cloud KMS alone.
    emulator.set_state(f"{name}/cryptoKeyVersions/1", "DISABLED")
    opened = cli("decrypt", "-i", files[0], env=NO_KEYSTORE)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == b"file 0"


def test_migrate_a_folder_local_to_gcp_and_back(cli: Cli, gcp_key: str, emulator, keystore):
    import kmsenvelope

    folder = cli.root / "data"
    (folder / "sub").mkdir(parents=True)
    originals = {}
    for index, name in enumerate(["a.bin", "b.bin", "sub/c.bin", "sub/d.txt"]):
        plaintext = f"envelope {index}".encode() * (index + 1)
        armor = name.endswith(".txt")
        (folder / name).write_bytes(
            kmsenvelope.encrypt(plaintext, ["local:app"], {"n": str(index)}, armor=armor)
        )
        originals[folder / name] = plaintext
    binaries = {p: payload_of(p.read_bytes()) for p in originals if p.suffix == ".bin"}

    there = cli("migrate", folder, "--to", gcp_key, "--remove", "local:app")
    assert there.returncode == 0, there.stderr
    assert "4 migrated" in there.stderr.decode()
    for path in originals:
        assert cli.recipients(path) == [f"{gcp_key}/cryptoKeyVersions/1"]
    for path, payload in binaries.items():
        assert payload_of(path.read_bytes()) == payload
    sample = next(iter(originals))
    opened = cli("decrypt", "-i", sample, "--context", "n=0", env=NO_KEYSTORE)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == originals[sample]

    back = cli("migrate", folder, "--to", "local:app", "--remove-provider", "gcp-kms")
    assert back.returncode == 0, back.stderr
    emulator.stop()  # Cloud KMS gone: the local key alone opens everything again
    for index, (path, plaintext) in enumerate(originals.items()):
        assert cli.recipients(path) == ["local:app/1"]
        assert kmsenvelope.decrypt(path.read_bytes(), {"n": str(index)}) == plaintext
    for path, payload in binaries.items():
        assert payload_of(path.read_bytes()) == payload


# -- errors, in process (same CLI code, faster) -------------------------------------------------


@pytest.fixture
def run_cli(cli: Cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local,gcp-kms")
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(cli.config))
    monkeypatch.chdir(cli.root)
    (cli.root / "in.txt").write_bytes(b"secret")

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(args))
        err = capsys.readouterr().err
        if code:
            assert err.startswith("kmsenvelope: error: "), err
            assert err.count("\n") == 1, err
            assert "Traceback" not in err
        return code, err

    return run


def test_errors_are_one_line_with_exit_codes(run_cli, cli: Cli, make_key, emulator):
    ring = "gcp-kms:projects/test-project/locations/global/keyRings/ring/cryptoKeys"
    encrypt = ("encrypt", "-i", "in.txt", "-o", "out.kmsenv", "--to")

    code, err = run_cli(*encrypt, f"{ring}/missing")
    assert code == 9
    assert "NOT_FOUND" in err

    denied = make_key()
    emulator.deny(denied.removeprefix("gcp-kms:"))
    code, err = run_cli(*encrypt, denied)
    assert code == 8
    assert "cloudkms.cryptoKeyVersions.useToEncrypt" in err

    disabled = make_key()
    emulator.set_state(disabled.removeprefix("gcp-kms:") + "/cryptoKeyVersions/1", "DISABLED")
    code, err = run_cli(*encrypt, disabled)
    assert code == 10
    assert "DISABLED" in err

    code, err = run_cli(*encrypt, "gcp-kms:projects/test-project/keyRings/ring")
    assert code == 2
    assert "expected gcp-kms:projects/P/locations/L/keyRings/R/cryptoKeys/K" in err

    cli.write({"emulator_host": "no-port"})
    code, err = run_cli(*encrypt, make_key())
    assert code == 2
    assert "setting 'emulator_host' in [providers.gcp-kms] must be HOST:PORT" in err

    cli.write({"emulator_host": emulator.grpc_host, "transport": "http"})
    code, err = run_cli(*encrypt, make_key())
    assert code == 2
    assert "transport" in err

    emulator.stop()
    cli.write({"emulator_host": emulator.grpc_host, **FAST, "retry_deadline": 0.3})
    code, err = run_cli(*encrypt, make_key())
    assert code == 7
    assert "UNAVAILABLE" in err


GOAWAY_SCRIPT = """
import os, sys
import kmsenvelope_gcp  # first, as the CLI imports it: before grpc
from kms_emulator import KmsEmulator
kms = KmsEmulator().start()
kek = kmsenvelope_gcp.GcpKmsKey("gcp-kms:" + kms.create_key("k"),
                                {"emulator_host": kms.grpc_host, "retry_deadline": 0.3})
kek.wrap(os.urandom(32), {})
kms.stop()  # the server cancels the connection: GOAWAY
try:
    kek.wrap(os.urandom(32), {})
except Exception as exc:
    print(type(exc).__name__)
"""


def test_no_grpc_core_lines_on_stderr(tmp_path: Path):
    """gRPC's C core logs a GOAWAY at INFO straight to stderr; the provider makes ERROR the
    default verbosity, so a CLI's stderr keeps its one-line errors."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    env["PYTHONPATH"] = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", GOAWAY_SCRIPT], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b"ProviderUnavailableError"
    assert done.stderr == b""
