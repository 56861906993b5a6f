"""``kmsenvelope migrate s3://BUCKET/PREFIX`` as a user runs it, against the moto server (S3 with
conditional writes, and KMS): 1,000 envelopes to AWS KMS and back, a multi-chunk object's
payload untouched, a concurrent writer never overwritten, SIGKILL then ``--resume``, dry run,
and a missing bucket."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from s3_support import (
    aws_env,
    cli,
    get_all,
    kms_key_arn,
    listing,
    moto_url,
    new_bucket,
    put_all,
    s3_client,
)

import kmsenvelope
from kmsenvelope.local import Keystore

__all__ = ["aws_env", "moto_url"]  # fixtures, imported for pytest

PREFIX = "tenants/acme"


@pytest.fixture
def keys(keystore: Keystore, aws_env: dict[str, str]) -> Keystore:
    keystore.create_key("old")
    keystore.create_key("new")
    return keystore


@pytest.fixture
def s3(moto_url: str) -> Any:
    return s3_client(moto_url)


def ids_in(data: bytes) -> list[str]:
    return [r.key_id for r in kmsenvelope.inspect_envelope(data).recipients]


def envelopes(count: int, *, sub: str = PREFIX) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``count`` envelopes for ``local:old`` (every third compact) as S3 objects under ``sub``,
    and their plaintexts."""
    objects, plain = {}, {}
    for i in range(count):
        key = f"{sub}/{i:05d}.env"
        plain[key] = f"secret number {i}".encode()
        compact = i % 3 == 0
        objects[key] = kmsenvelope.encrypt(plain[key], ["local:old"], {"n": str(i)}, armor=compact)
    return objects, plain


def test_thousand_envelopes_to_aws_kms_and_back(keys: Keystore, s3: Any, moto_url: str) -> None:
    bucket = new_bucket(s3)
    objects, plain = envelopes(1000)
    put_all(s3, bucket, objects)
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/README.txt", Body=b"not an envelope")
    outside = kmsenvelope.encrypt(b"elsewhere", ["local:old"], {})
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}-other/x.env", Body=outside)  # not under PREFIX/
    first = f"{PREFIX}/00001.env"
    s3.put_object(  # properties a PUT would drop unless carried over
        Bucket=bucket,
        Key=first,
        Body=objects[first],
        ContentType="application/x-kmsenvelope",
        Metadata={"owner": "billing"},
        Tagging="team=billing",
    )
    arn = kms_key_arn(moto_url)
    url = f"s3://{bucket}/{PREFIX}"
    there = cli("migrate", url, "--to", f"aws-kms:{arn}", "--remove", "local:old",
                "--concurrency", "16")  # fmt: skip
    assert there.returncode == 0, there.stderr
    assert "1001 items: 1000 migrated" in there.stderr
    moved = get_all(s3, bucket, list(objects))
    assert all(ids_in(data) == [f"aws-kms:{arn}"] for data in moved.values())
    assert all(data.startswith(b"kmsenv1.") for k, data in moved.items() if int(k[-9:-4]) % 3 == 0)
    head = s3.head_object(Bucket=bucket, Key=first)
    assert head["ContentType"] == "application/x-kmsenvelope"
    assert head["Metadata"] == {"owner": "billing"}
    tags = s3.get_object_tagging(Bucket=bucket, Key=first)["TagSet"]
    assert tags == [{"Key": "team", "Value": "billing"}]
    left_alone = {f"{PREFIX}/README.txt": b"not an envelope", f"{PREFIX}-other/x.env": outside}
    assert get_all(s3, bucket, list(left_alone)) == left_alone

    back = cli("migrate", url, "--to", "local:old", "--remove-provider", "aws-kms",
               "--allow", f"aws-kms:{arn}", "--concurrency", "16", "-q")  # fmt: skip
    assert back.returncode == 0, back.stderr
    returned = get_all(s3, bucket, list(objects))
    for key, data in returned.items():
        assert ids_in(data) == ["local:old/1"], key
        assert kmsenvelope.decrypt(data, {"n": str(int(key[-9:-4]))}) == plain[key]


def payload(data: bytes) -> bytes:
    """The bytes after a binary envelope's header: the encrypted chunks."""
    return data[kmsenvelope.inspect_envelope(data).header_size :]


def test_multi_chunk_payload_bytes_unchanged(keys: Keystore, s3: Any) -> None:
    bucket = new_bucket(s3)
    big = os.urandom(3 * 1024 * 1024 + 123)  # more than the store keeps in memory
    data = kmsenvelope.encrypt(big, ["local:old"], {"file": "big"})
    assert kmsenvelope.inspect_envelope(data).chunk_size * 2 < len(big)  # several chunks
    s3.put_object(Bucket=bucket, Key="big.env", Body=data)
    proc = cli("migrate", f"s3://{bucket}", "--to", "local:new", "--remove", "local:old")
    assert proc.returncode == 0, proc.stderr
    after = s3.get_object(Bucket=bucket, Key="big.env")["Body"].read()
    assert ids_in(after) == ["local:new/1"]
    assert payload(after) == payload(data)
    assert kmsenvelope.decrypt(after, {"file": "big"}) == big


class _Writer(threading.Thread):
    """Another application: re-writes one object over and over, each time different bytes (the
    same compact envelope behind more leading blanks, which the format allows), until stopped."""

    def __init__(self, s3: Any, bucket: str, key: str, data: bytes) -> None:
        super().__init__(daemon=True)
        self.s3, self.bucket, self.key, self.data = s3, bucket, key, data
        self.stop = threading.Event()
        self.writes = 0
        self.last = data

    def run(self) -> None:
        while not self.stop.is_set():
            self.writes += 1
            body = b" " * (self.writes % 5000) + self.data
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=body)
            self.last = body


def test_a_concurrent_change_is_not_overwritten(keys: Keystore, s3: Any, tmp_path: Path) -> None:
    bucket = new_bucket(s3)
    objects, _plain = envelopes(30)
    put_all(s3, bucket, objects)
    contested = f"{PREFIX}/00009.env"  # compact (9 % 3 == 0)
    writer = _Writer(s3, bucket, contested, objects[contested])
    writer.start()
    report = tmp_path / "report.json"
    try:
        # The rate limit holds every envelope between its read and its conditional write for
        # tens of milliseconds, while the other application re-writes the object meanwhile.
        proc = cli("migrate", f"s3://{bucket}/{PREFIX}/", "--to", "local:new",
                   "--remove", "local:old", "--rate-limit", "local=60", "--concurrency", "2",
                   "--report", str(report))  # fmt: skip
    finally:
        writer.stop.set()
        writer.join()
    assert writer.writes > 20
    assert proc.returncode == 13, proc.stderr
    assert "1 changed by others" in proc.stderr
    assert f"changed during the job, not overwritten: {contested}" in proc.stderr
    assert [c["key"] for c in json.loads(report.read_text())["conflicts"]] == [contested]
    final = get_all(s3, bucket, list(objects))
    assert final[contested] == writer.last  # the other application's last write stands
    assert ids_in(final[contested]) == ["local:old/1"]
    assert all(ids_in(v) == ["local:new/1"] for k, v in final.items() if k != contested)


def done_in(journal: Path) -> collections.Counter[str]:
    done: collections.Counter[str] = collections.Counter()
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if entry.get("status") == "done":
                done[entry["key"]] += 1
    return done


def test_sigkill_then_resume_loses_nothing(keys: Keystore, s3: Any, tmp_path: Path) -> None:
    bucket = new_bucket(s3)
    objects, plain = envelopes(200)
    put_all(s3, bucket, objects)
    journal = tmp_path / "job.journal"
    cmd = [sys.executable, "-m", "kmsenvelope", "migrate", f"s3://{bucket}/{PREFIX}",
           "--to", "local:new", "--remove", "local:old", "--concurrency", "4",
           "--rate-limit", "local=150",  # 200 envelopes x 3 calls: about 4 s, killed mid-job
           "--resume", "--journal", str(journal)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(done_in(journal).values()) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    on_new = sum(ids_in(d) == ["local:new/1"] for d in get_all(s3, bucket, list(objects)).values())
    assert 20 <= on_new < len(objects)  # killed mid-job

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    for key, data in get_all(s3, bucket, list(objects)).items():
        assert ids_in(data) == ["local:new/1"], key
        assert kmsenvelope.decrypt(data, {"n": str(int(key[-9:-4]))}) == plain[key]
    assert max(done_in(journal).values()) == 1  # never migrated twice
    assert "200 items" in final.stderr
    assert "0 failed, 0 changed by others" in final.stderr


def test_dry_run_changes_nothing(keys: Keystore, s3: Any, tmp_path: Path) -> None:
    bucket = new_bucket(s3)
    objects, _plain = envelopes(20)
    put_all(s3, bucket, objects)
    before = listing(s3, bucket)
    proc = cli("migrate", f"s3://{bucket}/{PREFIX}", "--to", "local:new", "--remove", "local:old",
               "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dry run: 20 items: 20 would be migrated" in proc.stderr
    assert listing(s3, bucket) == before
    assert get_all(s3, bucket, list(objects)) == objects
    assert not list((tmp_path / "state").rglob("*.journal"))


def test_missing_bucket_is_a_one_line_error(keys: Keystore) -> None:
    proc = cli("migrate", "s3://no-such-bucket-here/x", "--to", "local:new")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    bucket = "no-such-bucket-here"
    assert lines[0] == f"kmsenvelope: error: s3://{bucket}: no such bucket {bucket!r}"


def test_unreachable_endpoint_and_no_credentials_are_one_line_errors(
    keys: Keystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens once closed
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed}")
    proc = cli("migrate", "s3://bucket/p", "--to", "local:new")
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr == (
        "kmsenvelope: error: s3://bucket: S3 unreachable on listing objects "
        "(EndpointConnectionError)\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    proc = cli("migrate", "s3://bucket/q", "--to", "local:new")  # another job: its own journal
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "no usable AWS credentials (NoCredentialsError)" in proc.stderr
