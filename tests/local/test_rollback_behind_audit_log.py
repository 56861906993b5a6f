"""keystore.json and key files put back together, behind an audit log that was not, are refused.

Every key change records its keystore generation in the audit log and in the log's MAC'd head.
A keystore.json whose generation is below the log's (restored together with its key files from
an older copy) is refused when the keystore is opened and on every operation, not only by
``audit verify``; and ``audit verify`` requires generations to strictly increase along the
chain, so a log where they were reused (a rolled-back keystore changed again) fails.
"""

from __future__ import annotations

import hmac
import json
import resource
import subprocess
import sys
from hashlib import sha256
from pathlib import Path

import pytest
from local_support import PASSPHRASE, StoreOracle, assert_cli_error, run_cli

import kmsenvelope
from kmsenvelope import KmsEnvelopeError
from kmsenvelope.errors import KeystoreCorruptError
from kmsenvelope.hazmat import parse_header
from kmsenvelope.local import Keystore
from kmsenvelope.local.audit import AuditLog

CTX = {"app": "rollback-behind-log"}
OLDER = "keystore.json is older than the audit log: restored from an older copy?"


def read(path: Path) -> bytes:
    return path.read_bytes()


def head(keystore_dir: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((keystore_dir / "audit.head").read_text())
    return doc


def generation(keystore_dir: Path) -> int:
    return int(json.loads((keystore_dir / "keystore.json").read_text())["generation"])


def test_keystore_json_and_key_file_put_back_together_are_refused_everywhere(
    keystore_dir: Path, tmp_path: Path
) -> None:
    for name in ("k1", "k2", "k3"):
        assert run_cli("keys", "create", name).returncode == 0
    blob = kmsenvelope.Engine().encrypt(b"wrapped by k3/1", ["local:k3"], CTX)
    envelope = tmp_path / "k3v1.kenv"
    envelope.write_bytes(blob)
    files = ("keystore.json", "keys/k3.json")
    older = {n: read(keystore_dir / n) for n in files}
    opened_before = Keystore.open(keystore_dir, PASSPHRASE)
    assert run_cli("keys", "rotate", "k3").returncode == 0
    assert run_cli("keys", "destroy", "k3", "--version", "1", "--yes").returncode == 0
    assert run_cli("keys", "disable", "k3").returncode == 0
    current = {n: read(keystore_dir / n) for n in files}

    for name, data in older.items():  # both put back; audit.log and audit.head left intact
        (keystore_dir / name).write_bytes(data)

    line = assert_cli_error(run_cli("keys", "list"), 11, OLDER)
    assert "generation 3" in line
    assert "generation 6" in line
    out = tmp_path / "plain"
    refused = run_cli(
        "decrypt", str(envelope), "--context", "app=rollback-behind-log", "-o", str(out)
    )
    assert refused.returncode != 0
    assert OLDER in refused.stderr
    assert not out.exists()
    with pytest.raises(KmsEnvelopeError, match="older than the audit log"):
        kmsenvelope.Engine().decrypt(blob, CTX)
    for name in ("n1", "n2", "n3"):  # nothing is written on top: generations are never reused
        assert_cli_error(run_cli("keys", "create", name), 11, OLDER)
    assert_cli_error(run_cli("keys", "enable", "k3"), 11, OLDER)
    assert_cli_error(run_cli("audit", "verify"), 11, OLDER)
    assert read(keystore_dir / "keystore.json") == older["keystore.json"]
    with pytest.raises(KeystoreCorruptError, match="older than the audit log"):
        Keystore.open(keystore_dir, PASSPHRASE)
    with pytest.raises(KeystoreCorruptError, match="older than the audit log"):
        opened_before.get("k3")  # a keystore unlocked before the rollback checks every time
    with pytest.raises(KeystoreCorruptError):
        opened_before.unwrap("k3", parse_header(blob)[0].recipients[0], CTX)

    for name, data in current.items():  # the current files put back: all is well again
        (keystore_dir / name).write_bytes(data)
    listed = json.loads(run_cli("keys", "list", "--json").stdout)
    k3 = next(k for k in listed if k["name"] == "k3")
    assert (k3["enabled"], k3["current_version"]) == (False, 2)
    assert run_cli("audit", "verify").returncode == 0


def test_keystore_json_rolled_back_with_the_log_is_refused_by_its_key_files(
    keystore: Keystore, keystore_dir: Path
) -> None:
    """With the log rolled back too, keystore.json is as old as the log; the key files newer
    than keystore.json still give it away (they are not the ones it records)."""
    keystore.create_key("k")
    older = {n: read(keystore_dir / n) for n in ("keystore.json", "audit.log", "audit.head")}
    keystore.rotate("k")
    keystore.rotate("k")
    for name, data in older.items():
        (keystore_dir / name).write_bytes(data)
    with pytest.raises(KeystoreCorruptError, match=r"k\.json: key file is not the one"):
        keystore.get("k")


def test_reused_generations_fail_audit_verify(keystore: Keystore, keystore_dir: Path) -> None:
    """A log in which a rolled-back keystore was changed again (as kmsenvelope did before this
    check: generations 2 and 3 recorded a second time) fails, although its last generation
    matches keystore.json."""
    keystore.create_key("a")
    keystore.rotate("a")
    keystore.rotate("a")
    assert generation(keystore_dir) == 3
    assert run_cli("audit", "verify").returncode == 0
    log = AuditLog(keystore_dir, StoreOracle(keystore_dir, PASSPHRASE).audit_key)
    log.append("key.create", "local:b/1", generation=2)
    log.append("key.create", "local:c/1", generation=3)

    line = assert_cli_error(run_cli("audit", "verify"), 12, "generation 2 after generation 3")
    assert "audit.log:5" in line
    assert "rolled back" in line


def _write_legacy_head(keystore_dir: Path) -> None:
    """audit.head as kmsenvelope wrote it before heads recorded the generation."""
    current = head(keystore_dir)
    seq, digest = int(str(current["seq"])), str(current["hash"])
    key = StoreOracle(keystore_dir, PASSPHRASE).audit_key
    mac = hmac.new(key, f"audit.head|{seq}|{digest}".encode(), sha256).hexdigest()
    (keystore_dir / "audit.head").write_text(json.dumps({"seq": seq, "hash": digest, "mac": mac}))


def test_a_head_written_before_it_kept_the_generation_still_protects(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    older = {n: read(keystore_dir / n) for n in ("keystore.json", "keys/k.json")}
    keystore.set_enabled("k", False)
    _write_legacy_head(keystore_dir)
    assert run_cli("audit", "verify").returncode == 0
    assert Keystore.open(keystore_dir, PASSPHRASE).get("k").enabled is False
    current = {n: read(keystore_dir / n) for n in older}

    for name, data in older.items():  # the generation is then read from the log's entries
        (keystore_dir / name).write_bytes(data)
    assert_cli_error(run_cli("keys", "list"), 11, OLDER)

    for name, data in current.items():
        (keystore_dir / name).write_bytes(data)
    assert run_cli("keys", "enable", "k").returncode == 0  # the next entry upgrades the head
    assert head(keystore_dir)["gen"] == 3
    assert run_cli("audit", "verify").returncode == 0


def test_a_change_whose_audit_record_failed_does_not_lock_the_user_out(
    keystore: Keystore, keystore_dir: Path
) -> None:
    """keystore.json is written before the audit record: a change that dies between the two
    leaves keystore.json ahead of the log, which is accepted."""
    keystore.create_key("k")
    blob = kmsenvelope.Engine().encrypt(b"before the crash", ["local:k"], CTX)
    for i in range(24):  # grow the log well beyond the size of any other keystore file
        keystore.wrap("k", None, bytes(32), {"pad": f"{i}" + "x" * 900})
    limit = (keystore_dir / "audit.log").stat().st_size
    biggest = max(
        p.stat().st_size for p in [keystore_dir / "keystore.json", keystore_dir / "keys" / "k.json"]
    )
    assert limit > 8 * biggest

    def small_files() -> None:
        # the key file and keystore.json (new files, small) can be written; appending to
        # audit.log fails with EFBIG, as a full disk or a crash right there would stop it
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    died = subprocess.run(
        [sys.executable, "-m", "kmsenvelope", "keys", "rotate", "k"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        preexec_fn=small_files,
        check=False,
    )
    assert died.returncode != 0
    assert "File too large" in died.stderr, died.stderr
    assert generation(keystore_dir) == 2  # keystore.json was written ...
    assert head(keystore_dir)["gen"] == 1  # ... the audit record was not

    listed = json.loads(run_cli("keys", "list", "--json").stdout)
    assert listed[0]["current_version"] == 2
    assert kmsenvelope.Engine().decrypt(blob, CTX) == b"before the crash"
    assert run_cli("audit", "verify").returncode == 0
    assert run_cli("keys", "rotate", "k").returncode == 0
    assert generation(keystore_dir) == 3
    assert head(keystore_dir)["gen"] == 3
    ok = run_cli("audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert Keystore.open(keystore_dir, PASSPHRASE).get("k").current == 3
