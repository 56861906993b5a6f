"""SoftHSM2 tokens in a temporary directory, for driving the PKCS#11 provider for real.

Each test that asks for ``softhsm`` gets its own token directory and ``softhsm2.conf``
(``SOFTHSM2_CONF`` set with monkeypatch) and one initialised token, ``kmsenv-test``. The
provider's modules and sessions are closed around every test (``close_all``), so SoftHSM2
re-reads its configuration and no login leaks from one test into the next.

Tests skip, with the reason, only when SoftHSM2 itself is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kmsenvelope_pkcs11 import close_all, create_key

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
TOKEN = "kmsenv-test"
PIN = "user-pin-4711"
SO_PIN = "so-pin-0815"
# Credentials and module paths from the developer's shell must not reach the tests.
AMBIENT = ("KMSENVELOPE_PKCS11_MODULE", "KMSENVELOPE_PKCS11_PIN", "CLOUDHSM_PIN", "CLOUDHSM_ROLE")


def find_module() -> str | None:
    for path in MODULE_CANDIDATES:
        if os.path.exists(path):
            return path
    return None


MODULE = find_module()


@dataclass
class SoftHSM:
    """One SoftHSM2 installation confined to a temporary directory."""

    module: str
    conf: Path
    tokendir: Path
    token: str = TOKEN
    pin: str = PIN
    so_pin: str = SO_PIN
    tokens: dict[str, str] = field(default_factory=dict)  # label -> user PIN

    def init_token(self, label: str, pin: str, so_pin: str = SO_PIN) -> None:
        """``softhsm2-util --init-token --free``; call before the provider first uses the module
        (or call ``close_all()`` after) so SoftHSM2 sees the new token."""
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                so_pin,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
            timeout=30,
        )
        self.tokens[label] = pin

    def settings(self, **extra: Any) -> dict[str, Any]:
        """A ``[providers.pkcs11]`` table for the default token."""
        return {"module": self.module, "pin": self.pin, **extra}

    def create_key(self, label: str, key_type: str = "aes256", **kw: Any) -> str:
        """``kmsenvelope_pkcs11.create_key`` in the default token; returns the key's URI."""
        return create_key(self.module, self.token, self.pin, label, key_type, **kw)


@pytest.fixture
def softhsm_bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHSM]:
    """A SoftHSM2 configuration in ``tmp_path`` with no token yet."""
    if MODULE is None or shutil.which("softhsm2-util") is None:
        if os.environ.get("CI"):
            pytest.fail("SoftHSM2 must be installed in CI (.ci/run: apt-get install softhsm2)")
        pytest.skip(
            "SoftHSM2 is not installed (Debian/Ubuntu: apt-get install softhsm2; "
            f"looked for {', '.join(MODULE_CANDIDATES)} and softhsm2-util)"
        )
    tokendir = tmp_path / "tokens"
    tokendir.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    for var in AMBIENT:
        monkeypatch.delenv(var, raising=False)
    close_all()  # modules loaded by an earlier test would still read the old SOFTHSM2_CONF
    try:
        yield SoftHSM(MODULE, conf, tokendir)
    finally:
        close_all()


@pytest.fixture
def softhsm(softhsm_bare: SoftHSM) -> SoftHSM:
    """SoftHSM2 with one initialised token, ``kmsenv-test``, user PIN ``PIN``."""
    softhsm_bare.init_token(TOKEN, PIN)
    return softhsm_bare


@pytest.fixture
def aes_uri(softhsm: SoftHSM) -> str:
    """An AES-256 wrapping key created by the provider; its recorded URI."""
    return softhsm.create_key("aes-wrap", "aes256", key_id=b"\x01\x02")


@pytest.fixture
def rsa_uri(softhsm: SoftHSM) -> str:
    """An RSA-2048 wrapping key pair created by the provider; its recorded URI."""
    return softhsm.create_key("rsa-wrap", "rsa2048", key_id=b"\x0a\x0b")
