"""Keystore backup and restore: wipe and recover, secrecy of the backup file, tampering, merge."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from local_support import (
    FAST_KDF,
    PASSPHRASE,
    StoreOracle,
    assert_cli_error,
    audit_entries,
    find_leaks,
    mode,
    run_cli,
    snapshot,
    walk_files,
)

import kmsenvelope
from kmsenvelope import NoRecipientError
from kmsenvelope.errors import KeystoreError, WrongPassphraseError
from kmsenvelope.local import Keystore

BACKUP_PASSPHRASE = "backup passphrase, kept offline"
CTX = {"app": "backup-tests"}


def engine() -> kmsenvelope.Engine:
    """A new engine: reads the keystore location and passphrase from the environment now."""
    return kmsenvelope.Engine()


def key_states(store: Keystore) -> list[dict[str, Any]]:
    return [k.to_json() for k in store.list_keys()]


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def populate(store: Keystore) -> dict[str, bytes]:
    """Two AES keys and one RSA key, rotated, one version destroyed, one key disabled.

    Returns envelopes by label; the plaintext of each is ``label.encode()``.
    """
    eng = engine()
    blobs: dict[str, bytes] = {}

    def seal(label: str, *to: str) -> None:
        blobs[label] = eng.encrypt(label.encode(), list(to), CTX)

    store.create_key("alpha")
    seal("alpha-v1", "local:alpha")
    store.rotate("alpha")
    seal("alpha-v2", "local:alpha")
    store.rotate("alpha")
    seal("alpha-v3", "local:alpha")
    seal("alpha-pinned-v2", "local:alpha/2")
    store.create_key("bravo")
    seal("bravo", "local:bravo")
    store.create_key("rsa", "rsa3072")
    seal("rsa-v1", "local:rsa")
    store.rotate("rsa")
    seal("rsa-v2", "local:rsa")
    seal("multi", "local:bravo", "local:rsa")
    store.destroy_version("alpha", 1)
    store.set_enabled("bravo", False)
    return blobs


def check_envelopes(blobs: dict[str, bytes]) -> None:
    """Every envelope decrypts as it did before the backup: alpha/1 stays destroyed, bravo
    stays disabled until enabled."""
    eng = engine()
    for label, blob in blobs.items():
        if label in ("alpha-v1", "bravo"):
            continue
        assert eng.decrypt(blob, CTX) == label.encode(), label
    with pytest.raises(NoRecipientError) as destroyed:
        eng.decrypt(blobs["alpha-v1"], CTX)
    assert [a.key_id for a in destroyed.value.attempts] == ["local:alpha/1"]
    assert "destroyed" in destroyed.value.attempts[0].reason
    with pytest.raises(NoRecipientError) as disabled:
        eng.decrypt(blobs["bravo"], CTX)
    assert "disabled" in disabled.value.attempts[0].reason


@pytest.mark.parametrize("via", ["api", "cli"])
def test_backup_wipe_restore(
    via: str,
    keystore: Keystore,
    keystore_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blobs = populate(keystore)
    before = key_states(keystore)
    material_before = StoreOracle(keystore_dir, PASSPHRASE).all_material()
    assert "local:alpha/1" not in material_before
    assert len(material_before) == 5  # alpha/2, alpha/3, bravo/1, rsa/1, rsa/2
    backup = tmp_path / "offsite" / "keystore.backup"
    backup.parent.mkdir()

    if via == "api":
        assert keystore.backup(backup, BACKUP_PASSPHRASE) == 3
    else:
        proc = run_cli(
            "keys", "backup", str(backup), env={"KMSENVELOPE_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE}
        )
        assert proc.returncode == 0, proc.stderr
        assert "3 key(s)" in proc.stderr
    assert mode(backup) == 0o600
    assert (
        find_leaks(
            {"backup": backup.read_bytes()},
            {
                **material_before,
                "passphrase": PASSPHRASE.encode(),
                "backup passphrase": BACKUP_PASSPHRASE.encode(),
            },
        )
        == []
    )

    shutil.rmtree(keystore_dir)
    with pytest.raises(NoRecipientError):
        engine().decrypt(blobs["alpha-v3"], CTX)

    new_passphrase = PASSPHRASE if via == "api" else "a new machine, a new passphrase"
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", new_passphrase)
    if via == "api":
        restored = Keystore.create(keystore_dir, new_passphrase, kdf=FAST_KDF)
        assert restored.restore(backup, BACKUP_PASSPHRASE) == ["alpha", "bravo", "rsa"]
    else:
        proc = run_cli(
            "keys", "restore", str(backup), env={"KMSENVELOPE_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE}
        )
        assert proc.returncode == 0, proc.stderr
        assert "alpha, bravo, rsa" in proc.stderr
        restored = Keystore.open(keystore_dir, new_passphrase)

    # same keys, versions, states and flags; the very same material, re-sealed
    assert key_states(restored) == before
    assert StoreOracle(keystore_dir, new_passphrase).all_material() == material_before
    assert mode(keystore_dir) == 0o700
    assert all(mode(p) == 0o600 for p in walk_files(keystore_dir))

    check_envelopes(blobs)
    restored.set_enabled("bravo", True)
    assert engine().decrypt(blobs["bravo"], CTX) == b"bravo"
    # the restored keys keep working: rotation continues after the highest version
    assert restored.rotate("alpha").current == 4
    assert engine().decrypt(blobs["alpha-v2"], CTX) == b"alpha-v2"

    assert restored.audit.verify().entries == len(audit_entries(keystore_dir))
    assert [e["op"] for e in audit_entries(keystore_dir)][:2] == [
        "keystore.create",
        "keystore.restore",
    ]


@pytest.mark.usefixtures("umask_zero")
def test_backup_file_is_private_and_holds_no_secrets_in_the_clear(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("tell-no-one-9f3k")
    keystore.rotate("tell-no-one-9f3k")
    deks = {f"dek{i}": os.urandom(32) for i in range(2)}
    for i, dek in enumerate(deks.values()):
        w = keystore.wrap("tell-no-one-9f3k", i + 1, dek, CTX)
        assert keystore.unwrap("tell-no-one-9f3k", w, CTX) == dek
    oracle = StoreOracle(keystore_dir, PASSPHRASE)
    material = oracle.all_material()
    sealed = [v["material"] for v in oracle.key_doc("tell-no-one-9f3k")["versions"]]

    backup = tmp_path / "world-writable-dir" / "ks.backup"
    backup.parent.mkdir(mode=0o777)
    keystore.backup(backup, BACKUP_PASSPHRASE)
    assert mode(backup) == 0o600
    data = backup.read_bytes()
    assert not [p for p in backup.parent.iterdir() if p != backup]  # no temp file left

    secrets = {
        **material,
        **deks,
        "passphrase": PASSPHRASE.encode(),
        "backup passphrase": BACKUP_PASSPHRASE.encode(),
    }
    assert find_leaks({"backup": data}, secrets) == []
    for s in sealed:  # the key files' sealed strings, and what they decode to
        assert s.encode() not in data
        assert find_leaks({"backup": data}, {"sealed": base64.b64decode(s)}) == []
    assert b"tell-no-one-9f3k" not in data  # key names are inside the encrypted part too
    assert b"PRIVATE KEY" not in data
    doc = json.loads(data)
    assert doc["format"] == "kmsenvelope-keystore-backup/1"
    assert doc["kdf"]["name"] == "argon2id"
    assert set(doc) == {"format", "kdf", "nonce", "ciphertext"}


def test_wrong_backup_passphrase(keystore: Keystore, keystore_dir: Path, tmp_path: Path) -> None:
    keystore.create_key("wb")
    backup = tmp_path / "ks.backup"
    keystore.backup(backup, BACKUP_PASSPHRASE)
    target = Keystore.create(tmp_path / "target", PASSPHRASE, kdf=FAST_KDF)
    before = snapshot(tmp_path / "target")
    for wrong in ("not it", PASSPHRASE, BACKUP_PASSPHRASE.upper()):
        with pytest.raises(WrongPassphraseError) as info:
            target.restore(backup, wrong)
        assert str(backup) in str(info.value)
        assert wrong not in str(info.value)
    assert snapshot(tmp_path / "target") == before

    line = assert_cli_error(
        run_cli(
            "--keystore",
            str(tmp_path / "target"),
            "keys",
            "restore",
            str(backup),
            env={"KMSENVELOPE_BACKUP_PASSPHRASE": "nope, wrong"},
        ),
        11,
        str(backup),
    )
    assert "nope, wrong" not in line
    assert snapshot(tmp_path / "target") == before
    # the right passphrase works
    assert target.restore(backup, BACKUP_PASSPHRASE) == ["wb"]


def _edit_backup(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = json.loads(path.read_text())
        fn(doc)
        path.write_text(json.dumps(doc))

    return edit


def _flip_b64(field: str, index: int) -> Callable[[dict[str, Any]], None]:
    def flip(doc: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(doc[field]))
        raw[index] ^= 0x80
        doc[field] = base64.b64encode(bytes(raw)).decode()

    return flip


def _set_kdf(field: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["kdf"][field] = value

    return edit


BACKUP_TAMPERING: dict[str, Callable[[Path], None]] = {
    "ciphertext-first-byte": _edit_backup(_flip_b64("ciphertext", 0)),
    "ciphertext-middle-byte": _edit_backup(_flip_b64("ciphertext", 100)),
    "ciphertext-tag-byte": _edit_backup(_flip_b64("ciphertext", -1)),
    "ciphertext-truncated": _edit_backup(
        lambda d: d.update(
            ciphertext=base64.b64encode(base64.b64decode(d["ciphertext"])[:-40]).decode()
        )
    ),
    "nonce": _edit_backup(_flip_b64("nonce", 3)),
    "salt": _edit_backup(_set_kdf("salt", "AAAAAAAAAAAAAAAAAAAAAA==")),
    "kdf-iterations": _edit_backup(_set_kdf("iterations", 1)),
    "format": _edit_backup(lambda d: d.update(format="kmsenvelope-keystore-backup/9")),
    "ciphertext-missing": _edit_backup(lambda d: d.pop("ciphertext")),
    "ciphertext-not-base64": _edit_backup(lambda d: d.update(ciphertext="!!!")),
    "file-truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "file-empty": lambda p: p.write_bytes(b""),
    "file-garbage": lambda p: p.write_bytes(os.urandom(64)),
}


@pytest.fixture(scope="module")
def pristine_backup(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One backup (of one key) shared by the tampering cases: backups are slow to write."""
    base = tmp_path_factory.mktemp("pristine")
    store = Keystore.create(base / "ks", PASSPHRASE, kdf=FAST_KDF)
    store.create_key("tb")
    store.backup(base / "ks.backup", BACKUP_PASSPHRASE)
    target = Keystore.create(base / "check", PASSPHRASE, kdf=FAST_KDF)
    assert target.restore(base / "ks.backup", BACKUP_PASSPHRASE) == ["tb"]  # it is sound
    return (base / "ks.backup").read_bytes()


@pytest.mark.parametrize("tamper", list(BACKUP_TAMPERING), ids=list(BACKUP_TAMPERING))
def test_tampered_backup_is_refused_and_nothing_is_written(
    tamper: str, pristine_backup: bytes, tmp_path: Path
) -> None:
    backup = tmp_path / "ks.backup"
    backup.write_bytes(pristine_backup)
    BACKUP_TAMPERING[tamper](backup)
    target_dir = tmp_path / "target"
    target = Keystore.create(target_dir, PASSPHRASE, kdf=FAST_KDF)
    before = snapshot(target_dir)
    with pytest.raises(KeystoreError):
        target.restore(backup, BACKUP_PASSPHRASE)
    assert snapshot(target_dir) == before
    assert target.list_keys() == []


def test_missing_backup_file(keystore: Keystore, tmp_path: Path) -> None:
    with pytest.raises(KeystoreError) as info:
        keystore.restore(tmp_path / "nope.backup", BACKUP_PASSPHRASE)
    assert str(tmp_path / "nope.backup") in str(info.value)


def test_restore_conflict_writes_nothing(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("aaa-only-in-backup")
    keystore.create_key("shared")
    backup = tmp_path / "a.backup"
    keystore.backup(backup, BACKUP_PASSPHRASE)

    other_dir = tmp_path / "other"
    other = Keystore.create(other_dir, PASSPHRASE, kdf=FAST_KDF)
    other.create_key("shared")  # same name, different material
    other.create_key("mine")
    before = snapshot(other_dir)
    with pytest.raises(KeystoreError) as info:
        other.restore(backup, BACKUP_PASSPHRASE)
    assert "conflict" in str(info.value)
    assert "local:shared/1" in str(info.value)
    assert snapshot(other_dir) == before  # not even the key sorted before the conflict
    assert [k.name for k in other.list_keys()] == ["mine", "shared"]

    assert_cli_error(
        run_cli(
            "--keystore",
            str(other_dir),
            "keys",
            "restore",
            str(backup),
            env={"KMSENVELOPE_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE},
        ),
        11,
        "conflict",
        "local:shared/1",
    )
    assert snapshot(other_dir) == before


def test_restore_conflict_on_key_type(keystore: Keystore, tmp_path: Path) -> None:
    keystore.create_key("typed", "rsa3072")
    backup = tmp_path / "a.backup"
    keystore.backup(backup, BACKUP_PASSPHRASE)
    other_dir = tmp_path / "other"
    other = Keystore.create(other_dir, PASSPHRASE, kdf=FAST_KDF)
    other.create_key("typed", "aes256")
    before = snapshot(other_dir)
    with pytest.raises(KeystoreError) as info:
        other.restore(backup, BACKUP_PASSPHRASE)
    assert "local:typed" in str(info.value)
    assert snapshot(other_dir) == before


def test_restore_into_existing_keystore_merges_missing_keys_and_versions(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keystore A: m1 (rotated later) and m2
    keystore.create_key("m1")
    keystore.create_key("m2")
    blob_m1_v1 = engine().encrypt(b"m1 v1", ["local:m1"], CTX)
    blob_m2 = engine().encrypt(b"m2", ["local:m2"], CTX)
    first = tmp_path / "first.backup"
    keystore.backup(first, BACKUP_PASSPHRASE)
    keystore.rotate("m1")
    keystore.rotate("m1")
    blob_m1_v3 = engine().encrypt(b"m1 v3", ["local:m1"], CTX)
    second = tmp_path / "second.backup"
    keystore.backup(second, BACKUP_PASSPHRASE)
    material_a = StoreOracle(keystore_dir, PASSPHRASE).all_material()

    # keystore B has a key of its own
    b_dir = tmp_path / "b"
    b = Keystore.create(b_dir, PASSPHRASE, kdf=FAST_KDF)
    b.create_key("own")
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", str(b_dir))
    blob_own = engine().encrypt(b"own", ["local:own"], CTX)
    own_file = (b_dir / "keys" / "own.json").read_bytes()

    assert b.restore(first, BACKUP_PASSPHRASE) == ["m1", "m2"]
    assert [k.name for k in b.list_keys()] == ["m1", "m2", "own"]
    assert b.get("m1").current == 1
    assert (b_dir / "keys" / "own.json").read_bytes() == own_file
    assert engine().decrypt(blob_m1_v1, CTX) == b"m1 v1"
    assert engine().decrypt(blob_m2, CTX) == b"m2"
    assert engine().decrypt(blob_own, CTX) == b"own"
    with pytest.raises(NoRecipientError):
        engine().decrypt(blob_m1_v3, CTX)  # version 3 is not in the first backup

    # the second backup adds the missing versions of m1 and keeps everything else
    assert b.restore(second, BACKUP_PASSPHRASE) == ["m1", "m2"]
    info = b.get("m1")
    assert info.current == 3
    assert [(v.version, v.state) for v in info.versions] == [
        (1, "active"),
        (2, "active"),
        (3, "active"),
    ]
    assert engine().decrypt(blob_m1_v3, CTX) == b"m1 v3"
    material_b = StoreOracle(b_dir, PASSPHRASE).all_material()
    assert {k: v for k, v in material_b.items() if k != "local:own/1"} == material_a

    # local decisions survive a later restore: a destroyed version stays destroyed,
    # a disabled key stays disabled, and restoring again adds no duplicate versions
    b.destroy_version("m1", 1)
    b.set_enabled("m2", False)
    states = key_states(b)
    assert b.restore(second, BACKUP_PASSPHRASE) == ["m1", "m2"]
    assert key_states(b) == states
    with pytest.raises(NoRecipientError) as nr:
        engine().decrypt(blob_m1_v1, CTX)
    assert "destroyed" in str(nr.value)
    with pytest.raises(NoRecipientError):
        engine().decrypt(blob_m2, CTX)

    restores = [e for e in audit_entries(b_dir) if e["op"] == "keystore.restore"]
    assert len(restores) == 3
    assert b.audit.verify().entries == len(audit_entries(b_dir))
