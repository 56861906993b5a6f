"""One envelope for local, aws-kms and pkcs11 at once opens with any one of them while the
others are unavailable -- driven through the real CLI, against moto and SoftHSM2."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
pytest.importorskip("kmsenvelope_aws")
pytest.importorskip("kmsenvelope_pkcs11")

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
REGION = "eu-west-1"
PIN = "87654321"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def world(tmp_path: Path, moto_url: str) -> dict[str, object]:
    """A keystore, a KMS key in moto, a SoftHSM2 token, and a config naming all three."""
    if shutil.which("softhsm2-util") is None or not Path(SOFTHSM_MODULE).exists():
        if os.environ.get("CI"):
            pytest.fail("SoftHSM2 must be installed in CI (apt-get install softhsm2)")
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KMSENVELOPE_"))},
        "SOFTHSM2_CONF": str(conf),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "KMSENVELOPE_PLUGINS": "local,aws-kms,pkcs11",
        "KMSENVELOPE_KEYSTORE_PASSPHRASE": "integration passphrase",
    }
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "integ",
            "--pin",
            PIN,
            "--so-pin",
            "12345678",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=30,
    )
    kms = boto3.client(
        "kms",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
    )
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    account_keys = arn.rsplit("/", 1)[0] + "/*"
    env["KMSENVELOPE_CONFIG"] = str(tmp_path / "kmsenvelope.toml")
    (tmp_path / "kmsenvelope.toml").write_text(
        f"""
allowed_keys = ["local:*", "aws-kms:{account_keys}", "pkcs11:token=integ;*"]

[providers.local]
keystore = "{tmp_path / "keystore"}"

[providers.aws-kms]
endpoint_url = "{moto_url}"
max_attempts = 2
backoff_base = 0.01

[providers.pkcs11]
module = "{SOFTHSM_MODULE}"
pin = "{PIN}"
"""
    )
    return {"env": env, "cwd": tmp_path, "arn": arn}


def cli(
    world: dict[str, object], *args: str, stdin: bytes | None = None, **extra_env: str
) -> subprocess.CompletedProcess[bytes]:
    env = {**world["env"], **extra_env}  # type: ignore[dict-item]
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        input=stdin,
        env=env,
        cwd=world["cwd"],
        capture_output=True,
        timeout=120,
    )


def test_envelope_for_three_providers_opens_with_any_one(world: dict[str, object]) -> None:
    made = cli(world, "keys", "create", "local-key")
    assert made.returncode == 0, made.stderr
    made = cli(world, "keys", "create", "pkcs11:token=integ;object=wrap", "--type", "aes256")
    assert made.returncode == 0, made.stderr
    p11_uri = made.stdout.decode().strip()
    assert p11_uri.startswith("pkcs11:")
    assert "token=integ" in p11_uri
    assert PIN not in p11_uri

    plaintext = os.urandom(3000)
    enc = cli(
        world,
        "encrypt",
        "--to",
        "local:local-key",
        "--to",
        f"aws-kms:{world['arn']}",
        "--to",
        p11_uri,
        "--context",
        "job=integration",
        stdin=plaintext,
    )
    assert enc.returncode == 0, enc.stderr
    info = json.loads(cli(world, "inspect", "-", stdin=enc.stdout).stdout)
    assert [r["provider"] for r in info["recipients"]] == ["local", "aws-kms", "pkcs11"]
    assert info["recipients"][1]["key_id"] == f"aws-kms:{world['arn']}"

    dead_aws = {"KMSENVELOPE_PROVIDERS__AWS_KMS__ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"}
    dead_p11 = {"KMSENVELOPE_PROVIDERS__PKCS11__PIN": "11111111"}
    dead_local = {"KMSENVELOPE_KEYSTORE": str(Path(str(world["cwd"])) / "no-keystore")}

    for alive, broken in [
        ("local", {**dead_aws, **dead_p11}),
        ("aws-kms", {**dead_local, **dead_p11}),
        ("pkcs11", {**dead_local, **dead_aws}),
    ]:
        dec = cli(world, "decrypt", "--context", "job=integration", stdin=enc.stdout, **broken)
        assert dec.returncode == 0, (alive, dec.stderr)
        assert dec.stdout == plaintext, alive

    everything_down = {**dead_aws, **dead_p11, **dead_local}
    dec = cli(world, "decrypt", stdin=enc.stdout, **everything_down)
    assert dec.returncode == 4, dec.stderr
    message = dec.stderr.decode()
    assert "Traceback" not in message
    assert message.count("\n") == 1
    assert "local:local-key/1" in message
    assert "no keystore" in message
    assert world["arn"] in message  # type: ignore[operator]
    assert p11_uri in message
    assert "11111111" not in message
    assert PIN not in message
