"""Several processes and threads using one keystore at once cannot corrupt it or its audit log."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from local_support import PASSPHRASE, audit_entries, run_cli

import kmsenvelope
from kmsenvelope import WrappedKey
from kmsenvelope.durability import flush_all
from kmsenvelope.local import Keystore
from kmsenvelope.local.provider import factory

ROTATIONS_PER_WORKER = 10

# Rotates NAME COUNT times once told to start; after each rotation wraps a fresh data key
# with exactly the version it created, and prints it, so the parent can check that no
# version was lost or overwritten by the other process.
ROTATE_WORKER = r"""
import base64, json, os, sys, time
from pathlib import Path
from kmsenvelope.local import Keystore

directory, passphrase, name, count, ready, go = sys.argv[1:7]
store = Keystore.open(directory, passphrase)
Path(ready).touch()
deadline = time.monotonic() + 60
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("never told to start")
    time.sleep(0.001)
ctx = {"pid": str(os.getpid())}
for _ in range(int(count)):
    info = store.rotate(name)
    dek = os.urandom(32)
    w = store.wrap(name, info.current, dek, ctx)
    print(json.dumps({"version": info.current, "key_id": w.key_id, "alg": w.algorithm,
                      "ct": base64.b64encode(w.ciphertext).decode(), "dek": dek.hex(),
                      "ctx": ctx}), flush=True)
"""

# Encrypts and decrypts COUNT random messages through the public API once told to start;
# optionally rotates a key every third message. Prints each envelope for the parent.
CRYPT_WORKER = r"""
import hashlib, json, os, sys, time
from pathlib import Path
import kmsenvelope
from kmsenvelope.local import Keystore

worker, count, ready, go, rotate = sys.argv[1:6]
Path(ready).touch()
deadline = time.monotonic() + 60
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("never told to start")
    time.sleep(0.001)
store = Keystore.open(os.environ["KMSENVELOPE_KEYSTORE"],
                      os.environ["KMSENVELOPE_KEYSTORE_PASSPHRASE"])
wraps = unwraps = 0
for i in range(int(count)):
    to = ["local:conc-a"] if i % 2 else ["local:conc-a", "local:conc-b"]
    data = os.urandom(int.from_bytes(os.urandom(2), "big") * 2)
    ctx = {"worker": worker, "i": str(i)}
    blob = kmsenvelope.encrypt(data, to, ctx, armor=bool(i % 3 == 0), chunk_size=4096)
    assert kmsenvelope.decrypt(blob, ctx) == data, "round trip failed"
    wraps += len(to)
    unwraps += 1
    if rotate == "yes" and i % 3 == 2:
        store.rotate("conc-a")
    text = blob.decode() if i % 3 == 0 else blob.hex()
    print(json.dumps({"blob": text, "armor": i % 3 == 0, "sha": hashlib.sha256(data).hexdigest(),
                      "ctx": ctx}), flush=True)
print(json.dumps({"wraps": wraps, "unwraps": unwraps}), flush=True)
"""


def _wait_for(paths: list[Path], procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"worker exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail("workers never became ready")
        time.sleep(0.005)


def _finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


def _assert_versions_contiguous(store: Keystore, name: str, last: int) -> None:
    info = store.get(name)
    assert info.current == last
    assert [v.version for v in info.versions] == list(range(1, last + 1))
    assert all(v.state == "active" for v in info.versions)


def _assert_every_version_unwraps(store_dir: Path, name: str, last: int) -> None:
    for version in range(1, last + 1):
        kek = factory(f"local:{name}/{version}", {"keystore": str(store_dir)})
        dek = os.urandom(32)
        wrapped = kek.wrap(dek, {"v": str(version)})
        assert wrapped.key_id == f"local:{name}/{version}"
        assert (
            factory(f"local:{name}", {"keystore": str(store_dir)}).unwrap(
                wrapped, {"v": str(version)}
            )
            == dek
        )


def test_concurrent_rotation_api_two_processes(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("spin")
    go = tmp_path / "go"
    ready = [tmp_path / "ready-a", tmp_path / "ready-b"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                ROTATE_WORKER,
                str(keystore_dir),
                PASSPHRASE,
                "spin",
                str(ROTATIONS_PER_WORKER),
                str(r),
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    _wait_for(ready, procs)
    go.touch()
    outputs = _finish(procs)

    results = [[json.loads(line) for line in out.splitlines()] for out in outputs]
    per_worker = [{r["version"] for r in rs} for rs in results]
    assert [len(rs) for rs in results] == [ROTATIONS_PER_WORKER] * 2
    assert [len(v) for v in per_worker] == [ROTATIONS_PER_WORKER] * 2
    assert per_worker[0].isdisjoint(per_worker[1])
    # the two processes really did rotate at the same time (their versions interleave)
    assert min(per_worker[0]) < max(per_worker[1])
    assert min(per_worker[1]) < max(per_worker[0])
    last = 1 + 2 * ROTATIONS_PER_WORKER
    assert per_worker[0] | per_worker[1] == set(range(2, last + 1))
    _assert_versions_contiguous(keystore, "spin", last)

    # what each process wrapped right after its own rotation still unwraps: no version was
    # overwritten by the other process
    for r in results[0] + results[1]:
        assert r["key_id"] == f"local:spin/{r['version']}"
        wrapped = WrappedKey("local", r["key_id"], r["alg"], base64.b64decode(r["ct"]))
        assert keystore.unwrap("spin", wrapped, r["ctx"]) == bytes.fromhex(r["dek"])
    _assert_every_version_unwraps(keystore_dir, "spin", last)

    report = keystore.audit.verify()
    entries = audit_entries(keystore_dir)
    assert report.entries == len(entries)
    rotations = [e["key"] for e in entries if e["op"] == "key.rotate"]
    assert sorted(rotations) == sorted(f"local:spin/{v}" for v in range(2, last + 1))
    assert {e["pid"] for e in entries if e["op"] == "key.rotate"} == {p.pid for p in procs}


def test_concurrent_rotation_cli_two_processes(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("spin-cli")
    loop = (
        f"for i in $(seq {ROTATIONS_PER_WORKER}); do "
        f'"{sys.executable}" -m kmsenvelope -q keys rotate spin-cli || exit $?; done'
    )
    procs = [
        subprocess.Popen(
            ["bash", "-c", loop], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    _finish(procs)

    last = 1 + 2 * ROTATIONS_PER_WORKER
    _assert_versions_contiguous(keystore, "spin-cli", last)
    _assert_every_version_unwraps(keystore_dir, "spin-cli", last)
    assert keystore.audit.verify().entries == len(audit_entries(keystore_dir))
    rotate_pids = [e["pid"] for e in audit_entries(keystore_dir) if e["op"] == "key.rotate"]
    assert len(rotate_pids) == len(set(rotate_pids)) == 2 * ROTATIONS_PER_WORKER
    proc = run_cli("audit", "verify")
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_concurrent_encrypt_decrypt_threads_and_processes(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    keystore.create_key("conc-a")
    keystore.create_key("conc-b")
    per_worker = 12
    threads_n = 4
    go = tmp_path / "go"
    ready = [tmp_path / "ready-p0", tmp_path / "ready-p1"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CRYPT_WORKER,
                f"p{i}",
                str(per_worker),
                str(r),
                str(go),
                "yes" if i == 1 else "no",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, r in enumerate(ready)
    ]
    _wait_for(ready, procs)

    barrier = threading.Barrier(threads_n + 1)
    errors: list[BaseException] = []
    thread_blobs: list[tuple[bytes, bytes, dict[str, str]]] = []
    lock = threading.Lock()
    counts = Counter[str]()

    def work(tid: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(per_worker):
                to = ["local:conc-b"] if i % 2 else ["local:conc-a", "local:conc-b"]
                data = os.urandom(1000 * (tid + 1) + 997 * i)
                ctx = {"worker": f"t{tid}", "i": str(i)}
                blob = kmsenvelope.encrypt(data, to, ctx, chunk_size=4096)
                assert kmsenvelope.decrypt(blob, ctx) == data
                with lock:
                    thread_blobs.append((blob, data, ctx))
                    counts["wraps"] += len(to)
                    counts["unwraps"] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    go.touch()
    barrier.wait(timeout=30)
    for t in threads:
        t.join(timeout=120)
    outputs = _finish(procs)
    assert errors == []

    # every envelope, from every worker, decrypts here (fresh engine, nothing cached)
    engine = kmsenvelope.Engine()
    for blob, data, ctx in thread_blobs:
        assert engine.decrypt(blob, ctx) == data
    for out in outputs:
        lines = [json.loads(line) for line in out.splitlines()]
        tally = lines.pop()
        counts["wraps"] += tally["wraps"]
        counts["unwraps"] += tally["unwraps"]
        assert len(lines) == per_worker
        for item in lines:
            blob = item["blob"] if item["armor"] else bytes.fromhex(item["blob"])
            plain = engine.decrypt(blob, item["ctx"])
            assert hashlib.sha256(plain).hexdigest() == item["sha"]

    # the keystore is intact: conc-a was rotated 4 times by worker p1, all versions present
    _assert_versions_contiguous(keystore, "conc-a", 1 + per_worker // 3)
    _assert_versions_contiguous(keystore, "conc-b", 1)
    flush_all()  # a group commit may be writing audit.head (temp file, rename) right now
    assert not list(keystore_dir.rglob("*.tmp"))

    # the audit log holds exactly every operation, chained, from all three processes
    report = keystore.audit.verify()
    entries = audit_entries(keystore_dir)
    assert report.entries == len(entries)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    done = Counter(e["op"] for e in entries if e["outcome"] == "ok")
    # the decrypts in this test (after the workers) add one unwrap per envelope
    total_envelopes = threads_n * per_worker + 2 * per_worker
    assert done["wrap"] == counts["wraps"]
    assert done["unwrap"] == counts["unwraps"] + total_envelopes
    assert done["key.rotate"] == per_worker // 3
    assert all(e["outcome"] == "ok" for e in entries)
    pids = {e["pid"] for e in entries if e["op"] in ("wrap", "unwrap")}
    assert pids == {os.getpid(), *(p.pid for p in procs)}
    proc = run_cli("audit", "verify")
    assert proc.returncode == 0, proc.stderr
