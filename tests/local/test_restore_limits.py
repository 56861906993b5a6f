"""Issue 10 item 8 and issue 11 item 4: what ``keys restore`` refuses before it writes anything.

- KDF parameters above the keystore's ceilings (1 GiB, 10 passes), refused before Argon2id runs;
- a key of the same name that is another key (another identity, or, for keys made before
  identities existed, no version with key material on both sides to compare).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from local_support import FAST_KDF, PASSPHRASE, assert_cli_error, run_cli, snapshot

import kmsenvelope
from kmsenvelope.durability import flush_all
from kmsenvelope.errors import KeystoreError
from kmsenvelope.local import Keystore

BACKUP_PASSPHRASE = "backup passphrase for tests"
LEGACY = Path(__file__).parent / "data" / "keystore_v1"
LEGACY_BACKUP_PASSPHRASE = "legacy backup passphrase"
CTX = {"app": "restore"}


def write_backup(
    path: Path, keys: list[dict[str, Any]], kdf: dict[str, Any], passphrase: str
) -> None:
    """A backup file in the documented format, made without kmsenvelope's code."""
    salt = os.urandom(16)
    root = Argon2id(
        salt=salt,
        length=32,
        iterations=kdf["iterations"],
        lanes=kdf["lanes"],
        memory_cost=kdf["memory_kib"],
    ).derive(passphrase.encode())
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"kmsenvelope backup v1"
    ).derive(root)
    nonce = os.urandom(12)
    plain = json.dumps({"keystore_id": "0" * 32, "created": "2030-01-01T00:00:00Z", "keys": keys})
    ct = AESGCM(key).encrypt(nonce, plain.encode(), b"kmsenvelope-keystore-backup/1")
    doc = {
        "format": "kmsenvelope-keystore-backup/1",
        "kdf": {**kdf, "salt": base64.b64encode(salt).decode()},
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ct).decode(),
    }
    path.write_text(json.dumps(doc))


def one_key() -> list[dict[str, Any]]:
    raw = base64.b64encode(os.urandom(32)).decode()
    version = {"version": 1, "state": "active", "created": "2030-01-01T00:00:00Z", "raw": raw}
    return [
        {
            "format": "kmsenvelope-key/1",
            "name": "costly",
            "type": "aes256",
            "created": "2030-01-01T00:00:00Z",
            "enabled": True,
            "current": 1,
            "versions": [{**version, "public_key": None}],
        }
    ]


# -- KDF ceilings --------------------------------------------------------------------------------


def test_backup_kdf_passes_above_the_ceiling_are_refused(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    """A genuine backup (right passphrase) made with 11 Argon2id passes: over the ceiling."""
    backup = tmp_path / "eleven.backup"
    write_backup(backup, one_key(), {**FAST_KDF, "iterations": 11}, BACKUP_PASSPHRASE)
    before = snapshot(keystore_dir)
    with pytest.raises(KeystoreError) as info:
        keystore.restore(backup, BACKUP_PASSPHRASE)
    assert "iterations <= 10" in str(info.value)
    env = {"KMSENVELOPE_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE}
    assert_cli_error(run_cli("keys", "restore", str(backup), env=env), 11, "exceed the limits")
    assert snapshot(keystore_dir) == before
    # at the ceiling it is accepted
    write_backup(backup, one_key(), {**FAST_KDF, "iterations": 10}, BACKUP_PASSPHRASE)
    assert keystore.restore(backup, BACKUP_PASSPHRASE) == ["costly"]


@pytest.mark.parametrize(
    "kdf",
    [
        {"memory_kib": 4 * 1024 * 1024, "iterations": 64},  # the old maximum, 4 GiB x 64 passes
        {"memory_kib": 1024 * 1024 + 1, "iterations": 1},  # just over 1 GiB
    ],
    ids=["old-maximum", "just-over-1GiB"],
)
def test_backup_kdf_memory_above_the_ceiling_is_refused_before_deriving(
    kdf: dict[str, int], keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "costly.backup"
    write_backup(backup, one_key(), FAST_KDF, BACKUP_PASSPHRASE)
    doc = json.loads(backup.read_text())
    doc["kdf"].update(kdf)  # what the file asks for; deriving it would take gigabytes
    backup.write_text(json.dumps(doc))
    before = snapshot(keystore_dir)
    started = time.monotonic()
    proc = run_cli(
        "keys", "restore", str(backup), env={"KMSENVELOPE_BACKUP_PASSPHRASE": "wrong anyway"}
    )
    # the ceiling is the answer, not "wrong passphrase": nothing was derived
    assert_cli_error(proc, 11, "exceed the limits", "memory <= 1048576 KiB")
    assert time.monotonic() - started < 20  # a CLI start, not a 4 GiB Argon2id run
    assert snapshot(keystore_dir) == before


def test_a_new_keystore_refuses_kdf_parameters_above_the_ceiling(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="iterations <= 10"):
        Keystore.create(tmp_path / "ks", PASSPHRASE, kdf={**FAST_KDF, "iterations": 11})
    assert not Keystore.exists(tmp_path / "ks")


# -- key identity --------------------------------------------------------------------------------


def test_restore_refuses_another_keystores_key_of_the_same_name(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    """The reported case: our pay/1, the backup's unrelated pay whose version 1 is destroyed."""
    keystore.create_key("pay")
    ours = kmsenvelope.Engine().encrypt(b"ours", ["local:pay"], CTX)
    other = Keystore.create(tmp_path / "other", PASSPHRASE, kdf=FAST_KDF)
    other.create_key("pay")
    other.rotate("pay")
    other.destroy_version("pay", 1)  # no version left to compare: only the identity differs
    backup = tmp_path / "other.backup"
    other.backup(backup, BACKUP_PASSPHRASE)
    flush_all()  # the encrypt's audit record synced and the head moved (audit_sync "batch")
    before = snapshot(keystore_dir)

    with pytest.raises(KeystoreError) as info:
        keystore.restore(backup, BACKUP_PASSPHRASE)
    assert "local:pay" in str(info.value)
    assert "another key" in str(info.value)
    env = {"KMSENVELOPE_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE}
    assert_cli_error(run_cli("keys", "restore", str(backup), env=env), 11, "another key")
    assert snapshot(keystore_dir) == before
    assert keystore.get("pay").current == 1
    assert kmsenvelope.Engine().decrypt(ours, CTX) == b"ours"


def test_restore_of_the_same_key_keeps_its_identity(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    made = keystore.create_key("same")
    assert made.uuid is not None
    backup = tmp_path / "same.backup"
    keystore.backup(backup, BACKUP_PASSPHRASE)
    keystore.rotate("same")
    keystore.destroy_version("same", 1)  # nothing left to compare: the identity decides
    assert keystore.restore(backup, BACKUP_PASSPHRASE) == ["same"]
    elsewhere = Keystore.create(tmp_path / "elsewhere", PASSPHRASE, kdf=FAST_KDF)
    assert elsewhere.restore(backup, BACKUP_PASSPHRASE) == ["same"]
    assert elsewhere.get("same").uuid == made.uuid == keystore.get("same").uuid


@pytest.fixture
def legacy_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of a keystore written before key identities (kmsenvelope 0.1)."""
    target = tmp_path / "legacy"
    shutil.copytree(LEGACY / "store", target)
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", str(target))
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", PASSPHRASE)
    return target


def test_keys_without_identity_are_matched_by_their_material(
    legacy_dir: Path, tmp_path: Path
) -> None:
    store = Keystore.open(legacy_dir, PASSPHRASE)
    # its own old backup (no identities either) matches by material
    assert store.restore(LEGACY / "legacy.backup", LEGACY_BACKUP_PASSPHRASE) == [
        "alpha",
        "bravo",
        "charlie",
    ]
    # a backup of this key written after the upgrade carries an identity; the old key here is
    # recognised by its material and takes that identity
    copy = tmp_path / "copy"
    shutil.copytree(legacy_dir, copy)
    upgraded = Keystore.open(copy, PASSPHRASE)
    upgraded.rotate("alpha")
    identity = upgraded.get("alpha").uuid
    assert identity is not None
    backup = tmp_path / "upgraded.backup"
    upgraded.backup(backup, BACKUP_PASSPHRASE)
    fresh = tmp_path / "fresh-legacy"
    shutil.copytree(LEGACY / "store", fresh)
    legacy = Keystore.open(fresh, PASSPHRASE)
    assert legacy.get("alpha").uuid is None
    assert legacy.restore(backup, BACKUP_PASSPHRASE) == ["alpha", "bravo", "charlie"]
    assert legacy.get("alpha").uuid == identity
    assert legacy.get("alpha").current == 3


def test_a_key_without_identity_and_nothing_to_compare_is_refused(
    legacy_dir: Path, tmp_path: Path
) -> None:
    other = Keystore.create(tmp_path / "other", PASSPHRASE, kdf=FAST_KDF)
    other.create_key("alpha")
    other.rotate("alpha")
    other.rotate("alpha")
    other.destroy_version("alpha", 1)
    other.destroy_version("alpha", 2)
    backup = tmp_path / "other.backup"
    other.backup(backup, BACKUP_PASSPHRASE)
    assert len(Keystore.open(legacy_dir, PASSPHRASE).list_keys()) == 3
    before = snapshot(legacy_dir)
    env = {"KMSENVELOPE_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE}
    assert_cli_error(run_cli("keys", "restore", str(backup), env=env), 11, "cannot tell", "alpha")
    assert snapshot(legacy_dir) == before
