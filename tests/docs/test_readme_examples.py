"""Issue 11, "Done when": the README's examples run as written (a test runs them).

The code blocks of README.md's "Use it" section are read from the README itself, never copied
here, so an edit to an example is tested as it is published. The shell lines run with
``bash -e`` (the first failing line fails the test) with this virtualenv's ``kmsenvelope`` first
on PATH, in an empty working directory under a private HOME (tests/conftest.py), so the
keystore the commands create is a fresh one at the default location. The Python block then
runs, as a user would run it next, from that same shell session (same exported passphrase,
same directory), through ``exec`` in a child Python.

The migration example moves envelopes from Azure Key Vault to AWS KMS. AWS KMS is moto here,
reached through ``KMSENVELOPE_PROVIDERS__AWS_KMS__ENDPOINT_URL`` with an ``alias/prod`` made in
it; ``billing.vault.azure.net`` cannot be reached from a test, so the bucket's envelopes carry
a recipient of that vault (wrapped by a stand-in KEK that is never contacted) *after* a
``local:`` recipient, which the engine unwraps with first. The command itself runs verbatim.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import kmsenvelope
from kmsenvelope import WrappedKey

README = Path(__file__).resolve().parents[2] / "README.md"
TIMEOUT = 300
AZURE_KEY = "azure-kv:https://billing.vault.azure.net/keys/billing/0f3c2a9d8e7b4c1a"

# Runs the README's Python block as written, then checks what its comments promise.
HARNESS = """\
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    source = f.read()
namespace = {"__name__": "__main__"}
exec(compile(source, "README.md (python block of 'Use it')", "exec"), namespace)
token = namespace["token"]
assert isinstance(token, bytes) and token.startswith(b"kmsenv1."), token[:16]
print("README python block: ok")
"""

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _section(title: str) -> str:
    """The text of the README's ``## title`` section, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(title: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced code block of the section, in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(_section(title))]


def _use_it() -> tuple[str, str, str]:
    """The "Use it" section's command block, Python block and migration block."""
    blocks = _blocks("Use it")
    assert [lang for lang, _ in blocks] == ["sh", "python", "sh"], (
        "README 'Use it' no longer has exactly the sh, python and sh (migrate) blocks this test "
        "runs: run any new example here too"
    )
    (_, commands), (_, snippet), (_, migrate) = blocks
    assert "kmsenvelope migrate" in migrate
    return commands, snippet, migrate


def _bash(
    script: str, path: Path, cwd: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (written to ``path``) with ``bash -e -x`` in ``cwd``: each command is
    echoed to stderr, so a failure names its line."""
    path.write_text(script, encoding="utf-8")
    return subprocess.run(
        ["bash", "-e", "-x", str(path)],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This (isolated) environment with the virtualenv's ``kmsenvelope`` first on PATH."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **(extra or {})}


def _cli(*args: str, cwd: Path, env: Mapping[str, str]) -> str:
    """Run ``kmsenvelope ARGS``; its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "kmsenvelope"), *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"kmsenvelope {' '.join(args)}: {done.stderr}"
    return done.stdout


def _recipients(path: Path, cwd: Path, env: Mapping[str, str]) -> list[str]:
    info = json.loads(_cli("inspect", str(path), cwd=cwd, env=env))
    return [r["key_id"] for r in info["recipients"]]


def test_use_it_commands_and_python_snippet_run_as_written(
    isolated_env: Path, tmp_path: Path
) -> None:
    """The commands and the Python snippet run in order and do what they say."""
    commands, snippet, _ = _use_it()
    work = isolated_env
    report = os.urandom(3000)
    big = os.urandom(2 * 1024 * 1024 + 12345)  # several 1 MiB chunks: a real stream
    (work / "report.pdf").write_bytes(report)
    (work / "big.bin").write_bytes(big)
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS, encoding="utf-8")
    (tmp_path / "snippet.py").write_text(snippet, encoding="utf-8")
    python = shlex.join([sys.executable, str(harness), str(tmp_path / "snippet.py")]) + "\n"
    env = _cli_env()

    done = _bash(commands + python, tmp_path / "use-it.sh", work, env)

    assert done.returncode == 0, f"README example failed:\n{done.stderr}\n{done.stdout}"
    assert "README python block: ok" in done.stdout
    # The session's passphrase, as the README's export set it, opens what was written.
    env["KMSENVELOPE_KEYSTORE_PASSPHRASE"] = _exported(commands, "KMSENVELOPE_KEYSTORE_PASSPHRASE")
    assert (work / "report.pdf").read_bytes() == report  # decrypted back over the original
    assert _recipients(work / "report.pdf.kmsenv", work, env) == ["local:payments/1"]
    assert _recipients(work / "big.bin.kmsenv", work, env) == [
        "local:payments/1",
        "local:backup/1",
    ]
    _cli("decrypt", "-i", "big.bin.kmsenv", "-o", "big.out", cwd=work, env=env)
    assert (work / "big.out").read_bytes() == big


def _exported(commands: str, name: str) -> str:
    """The value the README's ``export NAME=…`` line gives, as bash reads it."""
    line = next(x for x in commands.splitlines() if x.startswith(f"export {name}="))
    words = shlex.split(line, comments=True)
    return words[1].split("=", 1)[1]


@pytest.mark.parametrize("section", ["Providers", "Configuration"])
def test_configuration_examples_load(isolated_env: Path, tmp_path: Path, section: str) -> None:
    """Each TOML example loads (with its profile, if it has one), and every provider setting it
    uses is one the provider declares: ``config show`` would print an undeclared one as ``***``.

    (The shell lines of "Providers" need a PKCS#11 token named ``prod`` and the KMS alias
    ``alias/backups`` of a real account, so they are not run here.)
    """
    for module in ("kmsenvelope_aws", "kmsenvelope_azure", "kmsenvelope_pkcs11"):
        pytest.importorskip(module)
    env = _cli_env({"KMSENVELOPE_PLUGINS": "local,aws-kms,azure-kv,pkcs11"})
    examples = [code for lang, code in _blocks(section) if lang == "toml"]
    assert examples, f"README '{section}' has no TOML example any more"
    for number, code in enumerate(examples):
        path = tmp_path / f"{section.lower()}-{number}.toml"
        path.write_text(code, encoding="utf-8")
        profiles = re.findall(r"^\[profiles\.([\w-]+)\]", code, re.MULTILINE)
        for profile in [None, *profiles]:
            args = ["--config", str(path), *(["--profile", profile] if profile else [])]
            shown = json.loads(_cli(*args, "config", "show", cwd=isolated_env, env=env))
            assert shown["providers"], code
            assert "***" not in json.dumps(shown), shown


class _BillingVaultStandIn:
    """Stands in for the Key Vault key the example migrates away from: it wraps (opaque bytes,
    as a vault's RSA-OAEP-256 would return) and must never be asked to unwrap."""

    key_id = AZURE_KEY

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        return WrappedKey("azure-kv", AZURE_KEY, "RSA-OAEP-256", os.urandom(256))

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        raise AssertionError("the Azure recipient was contacted")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto KMS server on 127.0.0.1 with the key ``alias/prod`` names."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    kms = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
    )
    key_id = kms.create_key(Description="README prod")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/prod", TargetKeyId=key_id)
    try:
        yield url
    finally:
        server.stop()


def _aws_env(moto_endpoint: str, home: Path) -> dict[str, str]:
    """No ambient cloud identity or proxy; fake AWS credentials; aws-kms pointed at moto."""
    ambient = ("AWS_", "AZURE_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    proxies = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    env = {
        k: v
        for k, v in _cli_env().items()
        if not k.startswith(ambient) and k.lower() not in proxies
    }
    return {
        **env,
        "KMSENVELOPE_PLUGINS": "local,aws-kms,azure-kv",
        "KMSENVELOPE_PROVIDERS__AWS_KMS__ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def test_migrate_example_runs_as_written(
    isolated_env: Path, tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure recipients are dropped, the AWS alias's key added, payloads still decrypt."""
    pytest.importorskip("kmsenvelope_aws")
    pytest.importorskip("kmsenvelope_azure")
    _, _, migrate = _use_it()
    work = isolated_env
    env = _aws_env(moto_endpoint, tmp_path)
    env["KMSENVELOPE_KEYSTORE_PASSPHRASE"] = "README migration test"
    env["KMSENVELOPE_KEYSTORE"] = str(tmp_path / "keystore")
    _cli("keys", "create", "payments", cwd=work, env=env)
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", env["KMSENVELOPE_KEYSTORE_PASSPHRASE"])
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", env["KMSENVELOPE_KEYSTORE"])
    engine = kmsenvelope.Engine()
    plain = {
        "bucket/invoices/2024-01.json.kmsenv": b'{"total": 120}',
        "bucket/2024-02.csv.kmsenv": b"id,amount\n1,30\n" * 1000,
    }
    for name, data in plain.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        blob = engine.encrypt(
            data, to=["local:payments", _BillingVaultStandIn()], context={"app": "billing"}
        )
        (work / name).write_bytes(blob)
        assert _recipients(work / name, work, env) == ["local:payments/1", AZURE_KEY]

    done = _bash(migrate, tmp_path / "migrate.sh", work, env)

    assert done.returncode == 0, f"README migrate example failed:\n{done.stderr}\n{done.stdout}"
    for name, data in plain.items():
        local, aws = _recipients(work / name, work, env)  # the Azure recipient is gone
        assert local == "local:payments/1"
        assert aws.startswith("aws-kms:arn:aws:kms:us-east-1:"), aws
        out = work / "plain.out"
        _cli("decrypt", "-i", name, "-o", str(out), "--context", "app=billing", cwd=work, env=env)
        assert out.read_bytes() == data
