"""Issue 10 item 7: replaying older key files, or rolling back the audit log, is detected.

Every change writes its key files with the next keystore generation and records each file's MAC
in keystore.json (under the keystore's MAC). A validly MAC'd older copy put back into keys/ is
refused; so is an older keystore.json. Rolling back *every* file cannot be seen from inside: the
audit log records each generation, and ``audit anchor`` / ``audit verify --anchor`` prove the log
itself was not rolled back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from local_support import PASSPHRASE, assert_cli_error, run_cli

import kmsenvelope
from kmsenvelope import NoRecipientError
from kmsenvelope.errors import KeyNotFoundError, KeystoreError
from kmsenvelope.hazmat import parse_header
from kmsenvelope.local import Keystore
from kmsenvelope.local.provider import factory

CTX = {"app": "rollback"}
LEGACY = Path(__file__).parent / "data" / "keystore_v1"


def engine() -> kmsenvelope.Engine:
    return kmsenvelope.Engine()


def key_file(keystore_dir: Path, name: str) -> Path:
    return keystore_dir / "keys" / f"{name}.json"


def assert_refused(store: Keystore, name: str) -> str:
    """Every way of using key ``name`` fails with a KeystoreError that says what happened."""
    with pytest.raises(KeystoreError) as info:
        store.get(name)
    message = str(info.value)
    assert f"{name}.json" in message
    assert "rolled back" in message or "not the one the keystore records" in message
    with pytest.raises(KeystoreError):
        store.list_keys()
    with pytest.raises(KeystoreError):
        store.wrap(name, None, b"\1" * 32, CTX)
    return message


def test_replayed_file_cannot_re_enable_a_disabled_key(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    blob = engine().encrypt(b"secret", ["local:k"], CTX)
    enabled = key_file(keystore_dir, "k").read_bytes()
    keystore.set_enabled("k", False)
    key_file(keystore_dir, "k").write_bytes(enabled)  # validly MAC'd, but older

    message = assert_refused(keystore, "k")
    assert "generation 1" in message
    assert "generation 2" in message
    with pytest.raises(NoRecipientError) as nr:
        engine().decrypt(blob, CTX)
    assert "rolled back" in str(nr.value)
    assert_cli_error(run_cli("keys", "list"), 11, "k.json", "rolled back")
    assert_cli_error(run_cli("keys", "enable", "k"), 11, "rolled back")


def test_replayed_file_cannot_resurrect_a_destroyed_version(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    blob = engine().encrypt(b"only v1", ["local:k"], CTX)
    keystore.rotate("k")
    with_v1 = key_file(keystore_dir, "k").read_bytes()
    keystore.destroy_version("k", 1)
    key_file(keystore_dir, "k").write_bytes(with_v1)

    assert_refused(keystore, "k")
    with pytest.raises(NoRecipientError) as nr:
        engine().decrypt(blob, CTX)
    assert "rolled back" in str(nr.value)
    wrapped = parse_header(blob)[0].recipients[0]
    with pytest.raises(KeystoreError):
        factory("local:k/1", {"keystore": str(keystore_dir)}).unwrap(wrapped, CTX)


def test_replayed_file_cannot_roll_back_the_current_version(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    keystore.rotate("k")
    at_v2 = key_file(keystore_dir, "k").read_bytes()
    keystore.rotate("k")
    key_file(keystore_dir, "k").write_bytes(at_v2)

    assert_refused(keystore, "k")
    with pytest.raises(KeystoreError):
        engine().encrypt(b"x", ["local:k"], CTX)  # never wrapped with version 2 again
    assert_cli_error(run_cli("encrypt", "--to", "local:k"), 11, "rolled back")


def test_several_files_replayed_together_are_refused(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("a")
    keystore.create_key("b")
    old = {n: key_file(keystore_dir, n).read_bytes() for n in ("a", "b")}
    keystore.set_enabled("a", False)
    keystore.rotate("b")
    for name, data in old.items():
        key_file(keystore_dir, name).write_bytes(data)
    assert_refused(keystore, "a")
    assert_refused(keystore, "b")
    with pytest.raises(KeystoreError):
        keystore.rotate("a")  # nothing is written on top of a rolled-back file


def test_an_older_keystore_json_alone_is_refused(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("k")
    meta = (keystore_dir / "keystore.json").read_bytes()
    keystore.rotate("k")
    keystore.rotate("k")
    (keystore_dir / "keystore.json").write_bytes(meta)
    with pytest.raises(KeystoreError) as info:
        keystore.get("k")
    assert "keystore.json is older than the audit log" in str(info.value)


def test_a_deleted_key_file_is_not_silently_replaced_by_a_new_key(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("k")
    blob = engine().encrypt(b"kept", ["local:k"], CTX)
    backup = tmp_path / "k.backup"
    keystore.backup(backup, "backup passphrase")
    key_file(keystore_dir, "k").unlink()
    with pytest.raises(KeyNotFoundError, match="records it"):
        keystore.get("k")
    with pytest.raises(KeyNotFoundError):
        keystore.create_key("k")  # another key under the same name would hide the loss
    assert keystore.restore(backup, "backup passphrase") == ["k"]
    assert engine().decrypt(blob, CTX) == b"kept"


def test_keystore_json_state_edits_are_detected(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("k")
    meta_path = keystore_dir / "keystore.json"
    doc = json.loads(meta_path.read_text())
    doc["generation"] = 0
    meta_path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError) as info:
        keystore.get("k")
    assert "keystore.json" in str(info.value)
    assert "integrity" in str(info.value)


def test_a_change_interrupted_before_keystore_json_is_adopted(
    keystore: Keystore, keystore_dir: Path
) -> None:
    """A crash between writing a key file and keystore.json must not look like a rollback."""
    keystore.create_key("k")
    first = key_file(keystore_dir, "k").read_bytes()
    saved = {
        n: (keystore_dir / n).read_bytes() for n in ("keystore.json", "audit.log", "audit.head")
    }
    keystore.rotate("k")
    for name, data in saved.items():  # as if the process died before keystore.json (and so
        (keystore_dir / name).write_bytes(data)  # before the audit record that follows it)

    assert keystore.get("k").current == 2
    assert keystore.rotate("k").current == 3  # the next change adopts the interrupted one
    assert Keystore.open(keystore_dir, PASSPHRASE).get("k").current == 3
    key_file(keystore_dir, "k").write_bytes(first)
    assert_refused(keystore, "k")


def test_whole_keystore_rolled_back_behind_its_audit_log_is_refused(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("k")
    saved = tmp_path / "saved"
    shutil.copytree(keystore_dir, saved)
    keystore.set_enabled("k", False)
    for name in ("keystore.json", "keys/k.json"):  # every key file and keystore.json ...
        shutil.copy(saved / name, keystore_dir / name)
    # ... consistent among themselves, but older than the audit log: refused everywhere
    with pytest.raises(KeystoreError, match="older than the audit log"):
        keystore.get("k")
    assert_cli_error(run_cli("audit", "verify"), 11, "generation", "older copy")


def test_audit_anchor_detects_a_rolled_back_log(keystore_dir: Path, tmp_path: Path) -> None:
    assert run_cli("keys", "create", "k").returncode == 0
    saved = tmp_path / "saved"
    shutil.copytree(keystore_dir, saved)
    assert run_cli("keys", "rotate", "k").returncode == 0
    made = run_cli("audit", "anchor")
    assert made.returncode == 0, made.stderr
    anchor = made.stdout.strip()
    seq, _, digest = anchor.partition(":")
    assert int(seq) >= 3
    assert len(digest) == 64
    assert run_cli("keys", "rotate", "k").returncode == 0
    ok = run_cli("audit", "verify", "--anchor", anchor)
    assert ok.returncode == 0, ok.stderr

    # The whole directory rolled back to a copy taken before the anchor: everything is
    # consistent, plain verify passes, the anchor does not.
    shutil.rmtree(keystore_dir)
    shutil.copytree(saved, keystore_dir)
    assert run_cli("audit", "verify").returncode == 0
    assert_cli_error(run_cli("audit", "verify", "--anchor", anchor), 12, "rolled back")
    # ... nor after the rolled-back log has grown past the anchor's sequence number again
    for _ in range(3):
        assert run_cli("keys", "rotate", "k").returncode == 0
    assert_cli_error(run_cli("audit", "verify", "--anchor", anchor), 12, "anchor")

    assert_cli_error(run_cli("audit", "verify", "--anchor", "not-an-anchor"), 2, "SEQ:HASH")


# -- keystores written before generations existed -------------------------------------------------


@pytest.fixture
def legacy_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of a keystore written by kmsenvelope 0.1 (format 1), selected and unlocked."""
    target = tmp_path / "legacy"
    shutil.copytree(LEGACY / "store", target)
    target.chmod(0o700)
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", str(target))
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", PASSPHRASE)
    return target


def test_a_format_1_keystore_stays_readable_and_is_upgraded_by_the_next_change(
    legacy_dir: Path,
) -> None:
    meta_before = (legacy_dir / "keystore.json").read_bytes()
    ctx = {"fixture": "keystore_v1"}
    assert engine().decrypt((LEGACY / "alpha-v1.kenv").read_bytes(), ctx) == b"alpha one"
    assert engine().decrypt((LEGACY / "alpha-v2.kenv").read_bytes(), ctx) == b"alpha two"
    listed = json.loads(run_cli("keys", "list", "--json").stdout)
    assert [(k["name"], k["enabled"], k["uuid"]) for k in listed] == [
        ("alpha", True, None),
        ("bravo", False, None),
        ("charlie", True, None),
    ]
    assert (legacy_dir / "keystore.json").read_bytes() == meta_before  # reading changes nothing

    legacy_alpha = key_file(legacy_dir, "alpha").read_bytes()
    assert run_cli("keys", "disable", "alpha").returncode == 0
    meta = json.loads((legacy_dir / "keystore.json").read_text())
    assert meta["format"] == "kmsenvelope-keystore/2"
    assert set(meta["keys"]) == {"alpha", "bravo", "charlie"}
    # the untouched keys are still read from their format-1 files
    assert run_cli("keys", "enable", "bravo").returncode == 0
    ok = run_cli("decrypt", str(LEGACY / "alpha-v2.kenv"), "--context", "fixture=keystore_v1")
    assert ok.returncode == 10  # alpha is disabled now (exit code of the only attempt)
    assert run_cli("audit", "verify").returncode == 0

    # the pre-upgrade alpha (enabled) replayed: refused
    key_file(legacy_dir, "alpha").write_bytes(legacy_alpha)
    assert_cli_error(run_cli("keys", "list"), 11, "alpha.json", "rolled back")
    # and putting back the format-1 keystore.json (no generations) does not get around it
    (legacy_dir / "keystore.json").write_bytes(meta_before)
    assert_cli_error(run_cli("keys", "list"), 11, "older copy")
