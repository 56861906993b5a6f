"""``-vv`` must never print what botocore logs at DEBUG: KMS request/response bodies carry
the data key (``Plaintext``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def test_verbose_cli_does_not_log_data_keys(moto_url: str, make_key: Any, tmp_path: Path) -> None:
    arn = make_key()["Arn"]
    env = {
        **os.environ,
        "KMSENVELOPE_PLUGINS": "aws-kms",
        "KMSENVELOPE_PROVIDERS__AWS_KMS__ENDPOINT_URL": moto_url,
    }
    (tmp_path / "plain").write_bytes(b"logged?")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kmsenvelope", "-vv", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    enc = cli("encrypt", "-i", "plain", "-o", "env", "--to", f"aws-kms:{arn}")
    assert enc.returncode == 0, enc.stderr
    dec = cli("decrypt", "-i", "env", "-o", "back", "--allow", f"aws-kms:{arn}")
    assert dec.returncode == 0, dec.stderr
    assert (tmp_path / "back").read_bytes() == b"logged?"
    for output in (enc.stderr, dec.stderr):
        assert "Plaintext" not in output
        assert "botocore" not in output
