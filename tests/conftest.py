"""Test isolation: no ambient plugins, config files, keystores or default engine leak in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import kmsenvelope

# Argon2id parameters for keystores created through the API in tests: real Argon2id, cheaper.
FAST_KDF = {"name": "argon2id", "iterations": 1, "memory_kib": 8192, "lanes": 1}
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Each test runs in an empty directory with a private HOME and only the local plugin."""
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("work")
    for name in list(os.environ):
        if name.startswith("KMSENVELOPE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local")
    monkeypatch.chdir(work)
    monkeypatch.setattr(kmsenvelope, "_default", None)
    return work


@pytest.fixture
def keystore_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh keystore (fast KDF) selected through the environment, passphrase set."""
    from kmsenvelope.local import Keystore

    path = tmp_path / "keystore"
    Keystore.create(path, PASSPHRASE, kdf=FAST_KDF)
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", str(path))
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", PASSPHRASE)
    return path


@pytest.fixture
def keystore(keystore_dir: Path) -> kmsenvelope.local.Keystore:
    """The unlocked keystore of ``keystore_dir``."""
    from kmsenvelope.local import Keystore

    return Keystore.open(keystore_dir, PASSPHRASE)
