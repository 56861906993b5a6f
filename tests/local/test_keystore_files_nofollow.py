"""Issue 10 item 10: keystore files are opened with O_NOFOLLOW and must be regular files.

A symbolic link planted as ``audit.log`` made every audited operation append to whatever it
pointed at; a FIFO would block. Both are now refused with a one-line error, and the target is
left untouched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from local_support import PASSPHRASE, assert_cli_error, run_cli

from kmsenvelope.errors import KeystoreError
from kmsenvelope.local import Keystore

CTX = {"app": "nofollow"}


def test_a_symlinked_audit_log_is_refused_and_its_target_untouched(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("k")
    victim = tmp_path / "victim.txt"
    victim.write_text("do not append here\n")
    log = keystore_dir / "audit.log"
    shutil.copy(log, tmp_path / "saved.log")
    log.unlink()
    log.symlink_to(victim)

    with pytest.raises(KeystoreError) as info:
        keystore.wrap("k", None, os.urandom(32), CTX)
    assert "audit.log" in str(info.value)
    assert "symbolic link" in str(info.value)
    assert_cli_error(run_cli("encrypt", "--to", "local:k"), 11, "audit.log", "symbolic link")
    assert_cli_error(run_cli("audit", "verify"), 11, "symbolic link")
    assert victim.read_text() == "do not append here\n"


def test_a_symlinked_audit_head_is_refused(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("k")
    head = keystore_dir / "audit.head"
    elsewhere = tmp_path / "head-copy"
    shutil.copy(head, elsewhere)
    head.unlink()
    head.symlink_to(elsewhere)
    with pytest.raises(KeystoreError, match=r"audit\.head.*symbolic link"):
        keystore.rotate("k")


def test_a_symlinked_key_file_is_refused(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("k")
    path = keystore_dir / "keys" / "k.json"
    real = tmp_path / "k.json"
    shutil.copy(path, real)  # the very same, valid content, reached through a link
    path.unlink()
    path.symlink_to(real)
    with pytest.raises(KeystoreError) as info:
        keystore.get("k")
    assert "k.json" in str(info.value)
    assert "symbolic link" in str(info.value)
    assert_cli_error(run_cli("keys", "list"), 11, "symbolic link")


def test_a_fifo_as_audit_log_is_refused_without_blocking(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    log = keystore_dir / "audit.log"
    log.unlink()
    os.mkfifo(log)
    proc = run_cli("encrypt", "--to", "local:k", timeout=60)
    assert_cli_error(proc, 11, "audit.log", "not a regular file")
    with pytest.raises(KeystoreError, match="not a regular file"):
        Keystore.open(keystore_dir, PASSPHRASE).audit.verify()
