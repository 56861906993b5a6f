"""Issue 10 item 5: what one envelope can add to the keystore's audit log is bounded.

A hostile envelope may name 64 local recipients and carry a context of nearly 1 MiB; every
unwrap attempt is audited with the context, so before the fix one such envelope grew the log by
tens of megabytes. Now every record is bounded (large contexts as a digest and size, long key
ids truncated) and the engine caps the unwrap attempts per envelope.
"""

from __future__ import annotations

import json
import os
import struct
from hashlib import sha256
from pathlib import Path

import pytest
from local_support import audit_entries, run_cli

from kmsenvelope import WrappedKey
from kmsenvelope.errors import UnwrapError
from kmsenvelope.hazmat import seal
from kmsenvelope.local import Keystore

LIMIT = 64 * 1024
MAX_HEADER_BODY = 1 << 20
RECIPIENTS = 64
LONG_NAME = 128  # the longest local key name
VERSION = "9999999999"  # the longest version number a local key id may carry
WRAPPED_LEN = 60


def canonical_context(context: dict[str, str]) -> bytes:
    """docs/format.md 5.4, written out here independently of kmsenvelope's encoder."""
    out = struct.pack(">H", len(context))
    for key in sorted(context, key=lambda k: k.encode()):
        k, v = key.encode(), context[key].encode()
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def hostile_recipients() -> list[WrappedKey]:
    """64 local recipients with the longest key ids, none of which the keystore can unwrap."""
    return [
        WrappedKey(
            "local",
            f"local:{i:02d}{'n' * (LONG_NAME - 2)}/{VERSION}",
            "AES-256-GCM",
            os.urandom(WRAPPED_LEN),
        )
        for i in range(RECIPIENTS)
    ]


def largest_context(recipients: list[WrappedKey]) -> dict[str, str]:
    """A context that fills the header body up to the format's 1 MiB limit."""
    stanzas = sum(
        1 + len(r.provider) + 2 + len(r.key_id) + 1 + len(r.algorithm) + 1 + 2 + WRAPPED_LEN
        for r in recipients
    )
    fixed = 4 + 16 + 2 + 2  # chunk size, nonce, context count, recipient count
    entries = 16
    budget = MAX_HEADER_BODY - fixed - stanzas - entries * (2 + 3 + 2)
    value_len = budget // entries
    assert value_len <= 0xFFFF
    return {f"k{i:02d}": "v" * value_len for i in range(entries)}


def envelope_file(tmp_path: Path, context: dict[str, str]) -> Path:
    recipients = hostile_recipients()
    blob = seal(b"x", recipients, context, dek=os.urandom(32), nonce=os.urandom(16))
    path = tmp_path / "hostile.kenv"
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize(
    "shape",
    [
        "largest-context",  # ~1 MiB: recorded as a digest, so every record stays small
        "context-just-below-the-digest-threshold",  # recorded in full: needs the attempt cap
    ],
)
def test_one_hostile_envelope_adds_less_than_64_kib(
    shape: str, keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("mine")  # the user's own key; the envelope does not name it
    if shape == "largest-context":
        context = largest_context(hostile_recipients())
    else:
        context = {"c": "x" * 1015}  # canonical JSON of 1023 bytes
    path = envelope_file(tmp_path, context)
    log = keystore_dir / "audit.log"
    before = log.stat().st_size

    proc = run_cli("decrypt", str(path), "-o", str(tmp_path / "out"))

    assert proc.returncode == 9, proc.stderr  # every key tried was "no such key"
    assert "Traceback" not in proc.stderr
    grown = log.stat().st_size - before
    assert 0 < grown < LIMIT, f"one envelope added {grown} bytes to the audit log"
    assert keystore.audit.verify().entries == len(audit_entries(keystore_dir))


def test_a_large_context_is_recorded_as_digest_and_size(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("big")
    context = {"blob": "z" * 5000, "tenant": "acme"}
    wrapped = keystore.wrap("big", None, os.urandom(32), context)
    assert keystore.unwrap("big", wrapped, context)
    small = {"tenant": "acme"}
    keystore.wrap("big", None, os.urandom(32), small)

    entries = audit_entries(keystore_dir)
    big = [e for e in entries if e["op"] in ("wrap", "unwrap")][:2]
    encoded = canonical_context(context)
    for entry in big:
        assert "context" not in entry
        assert entry["context_digest"] == {
            "sha256": sha256(encoded).hexdigest(),
            "size": len(encoded),
            "entries": 2,
        }
        assert len(json.dumps(entry)) < 1024
    assert entries[-1]["context"] == small  # a small context is still recorded in full
    assert keystore.audit.verify().entries == len(entries)


def test_a_long_key_id_is_truncated_in_the_record(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("k")
    key_id = "local:k/" + "1" * 60000
    with pytest.raises(UnwrapError):
        keystore.unwrap("k", WrappedKey("local", key_id, "AES-256-GCM", b"\0" * 60), {})
    entry = audit_entries(keystore_dir)[-1]
    assert entry["op"] == "unwrap"
    assert entry["key"].startswith("local:k/111")
    assert len(entry["key"]) < 300
    assert entry["key_digest"] == {"sha256": sha256(key_id.encode()).hexdigest(), "size": 60008}
    assert len((keystore_dir / "audit.log").read_text().splitlines()[-1]) < 2048
    assert keystore.audit.verify().entries == len(audit_entries(keystore_dir))
