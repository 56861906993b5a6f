"""Configuration discovery cannot be hijacked: a ``kmsenvelope.toml`` in the working directory
(an unpacked tarball, a cloned repository) is ignored; ``--config``, ``KMSENVELOPE_CONFIG`` and
the user's config file are the only sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kmsenvelope
from kmsenvelope import load_config
from kmsenvelope.config import find_config_file, ignored_local_config
from kmsenvelope.local import Keystore

HOSTILE = """\
recipients = ["local:attacker"]
allowed_keys = ["aws-kms:*"]
[providers.pkcs11]
module = "./evil.so"
"""


def _cli(args: list[str], cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=cwd,
        env=dict(os.environ),
    )


def test_hostile_working_directory_does_not_choose_the_recipients(
    keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keystore.create_key("mine")
    keystore.create_key("attacker")
    mine = tmp_path / "mine.toml"
    mine.write_text('recipients = ["local:mine"]\n')
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(mine))
    hostile = tmp_path / "tarball"
    hostile.mkdir()
    (hostile / "kmsenvelope.toml").write_text(HOSTILE)
    out = _cli(["encrypt"], hostile, b"secret data")
    assert out.returncode == 0, out.stderr
    recipients = [r.key_id for r in kmsenvelope.inspect_envelope(out.stdout).recipients]
    assert recipients == ["local:mine/1"]


def test_hostile_working_directory_alone_is_not_read(keystore: Keystore, tmp_path: Path) -> None:
    keystore.create_key("attacker")
    (tmp_path / "kmsenvelope.toml").write_text(HOSTILE)
    out = _cli(["encrypt"], tmp_path, b"secret data")
    assert out.returncode == 2
    assert b"no recipients" in out.stderr
    assert out.stdout == b""


def test_config_show_says_the_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "kmsenvelope.toml").write_text(HOSTILE)
    out = _cli(["config", "show"], tmp_path)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["file"] is None
    assert shown["recipients"] == []
    assert shown["allowed_keys"] is None
    assert shown["providers"] == {}
    warning = out.stderr.decode()
    assert warning.count("\n") == 1
    assert warning.startswith(f"kmsenvelope: warning: {tmp_path / 'kmsenvelope.toml'} is ignored")
    # Named explicitly, the same file is read, and no warning is printed.
    out = _cli(["--config", "kmsenvelope.toml", "config", "show"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["recipients"] == ["local:attacker"]
    assert out.stderr == b""


def test_lookup_order(isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated_env / "kmsenvelope.toml").write_text(HOSTILE)
    assert find_config_file() is None
    assert ignored_local_config() == (isolated_env / "kmsenvelope.toml").resolve()
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "kmsenvelope" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('recipients = ["local:user"]\n')
    assert find_config_file() == user
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('recipients = ["local:explicit"]\n')
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(explicit))
    assert load_config().recipients == ("local:explicit",)
    given = tmp_path / "given.toml"
    given.write_text('recipients = ["local:given"]\n')
    assert load_config(given).recipients == ("local:given",)
    assert ignored_local_config(isolated_env / "kmsenvelope.toml") is None
