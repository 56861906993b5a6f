"""Kill ``kmsenvelope migrate`` with SIGKILL at random moments, resume, and lose nothing."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from migrate_support import migrate_command

import kmsenvelope
from kmsenvelope.local import Keystore

COUNT = 600
KILLS = 20


def test_sigkill_at_random_points_then_resume(keystore: Keystore, tmp_path: Path) -> None:
    keystore.create_key("old")
    keystore.create_key("new")
    tree = tmp_path / "tree"
    originals: dict[Path, bytes] = {}
    for i in range(COUNT):
        path = tree / f"batch{i % 7}" / f"env{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(200 + i)
        path.write_bytes(kmsenvelope.encrypt(data, ["local:old"], chunk_size=64, armor=i % 5 == 0))
        originals[path] = data
    journal = tmp_path / "job.journal"
    cmd = migrate_command(
        tree,
        # A rate limit makes the job last long enough for every kill to land mid-job, however
        # fast or loaded the machine is (600 envelopes x 3 provider calls at 150 calls/s).
        "--rate-limit",
        "local=150",
        "--resume",
        "--journal",
        str(journal),
    )
    rng = random.Random(20261128)
    kills = 0
    runs = 0
    completed_early = False
    while kills < KILLS and runs < 60:
        runs += 1
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.7))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if proc.returncode == 0:
            completed_early = True  # later kills land on a finished job: must stay a no-op
    assert kills >= KILLS, (kills, runs)
    print(f"runs={runs} kills={kills} completed_before_last_kill={completed_early}")

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr

    # Every envelope: original plaintext, exactly the new recipient, payload intact.
    for path, data in originals.items():
        env = path.read_bytes()
        assert [r.key_id for r in kmsenvelope.inspect_envelope(env).recipients] == [
            "local:new/1"
        ], path
        assert kmsenvelope.decrypt(env) == data, path
    # Nothing half-written or left behind.
    leftovers = [p for p in tree.rglob("*") if p.is_file() and p not in originals]
    assert leftovers == []
    # Never migrated twice: at most one "done" per envelope, and every one finished.
    done = collections.Counter()
    finished = set()
    for line in journal.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if "key" in entry:
            if entry["status"] == "done":
                done[entry["key"]] += 1
            if entry["status"] in ("done", "unchanged"):
                finished.add(entry["key"])
    assert max(done.values()) == 1
    assert finished == {str(p) for p in originals}
    # The keystore survived the kills too.
    assert keystore.audit.verify().entries > COUNT
