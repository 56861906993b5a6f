"""``kmsenvelope migrate s3://… --to aws-kms:… --dask tcp://…`` on a real Dask cluster (a
``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1) against moto S3 and KMS:
3,000 envelopes, one worker SIGKILLed mid-run and a new one started; the job completes, every
envelope is wrapped by the target exactly once and decrypts without the old key. And a worker
that lacks the provider: its items are reported failed, nothing crashes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from dask_support import (
    Cluster,
    aws_env,
    backend,
    cli,
    cluster,
    get_all,
    kms_key_arn,
    moto_url,
    new_bucket,
    put_all,
    s3_client,
)

import kmsenvelope
from kmsenvelope import Engine, ProviderRegistry, load_config
from kmsenvelope.local import Keystore

__all__ = ["aws_env", "cluster", "moto_url"]  # fixtures, imported for pytest

COUNT = 3000
PREFIX = "tenants/acme"


def envelopes(count: int) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``count`` envelopes for ``local:old`` (every third compact), and their plaintexts."""
    objects, plain = {}, {}
    for i in range(count):
        key = f"{PREFIX}/{i:05d}.env"
        plain[key] = f"secret number {i}".encode()
        objects[key] = kmsenvelope.encrypt(
            plain[key], ["local:old"], {"n": str(i)}, armor=i % 3 == 0
        )
    return objects, plain


def migrated(bucket: str, originals: dict[str, bytes]) -> int:
    """How many objects differ from what was put (read from moto's backend: cheap). Polled
    while the job runs: an object replaced while it is read (moto closes the old one's buffer)
    is read again."""
    store = backend()

    def current(key: str) -> bytes:
        for _ in range(100):
            try:
                return bytes(store.get_object(bucket, key).value)
            except ValueError:  # "I/O operation on closed file": replaced meanwhile
                time.sleep(0.01)
        raise AssertionError(f"{key} could not be read")

    return sum(current(k) != v for k, v in originals.items())


@pytest.mark.slow
def test_worker_killed_mid_run_the_job_completes_exactly_once(
    cluster: Cluster, keystore: Keystore, moto_url: str, tmp_path: Path
) -> None:
    keystore.create_key("old")
    s3 = s3_client(moto_url)
    bucket = new_bucket(s3)
    objects, plain = envelopes(COUNT)
    put_all(bucket, objects)
    arn = kms_key_arn(moto_url)
    report_path = tmp_path / "report.json"
    job = subprocess.Popen(
        [
            sys.executable, "-m", "kmsenvelope", "migrate", f"s3://{bucket}/{PREFIX}",
            "--to", f"aws-kms:{arn}", "--remove", "local:old",
            "--dask", cluster.address, "--shard-size", "100", "--concurrency", "8",
            "--report", str(report_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while migrated(bucket, objects) < COUNT // 5:  # a fifth done: kill a worker mid-run
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, cluster.log_text()
            time.sleep(0.1)
        victim = cluster.workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert migrated(bucket, objects) < COUNT  # it did die mid-run
        cluster.start_worker()
        _out, err = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, err + cluster.log_text()
    assert "Traceback" not in err
    assert f"kmsenvelope: migrating on the Dask cluster at {cluster.address} (2 workers)" in err
    assert f"{COUNT} items:" in err

    report = json.loads(report_path.read_text())
    summary = report["summary"]
    assert report["ok"] is True
    assert summary["total"] == COUNT
    assert summary["failed"] == summary["conflicts"] == 0
    # Items the killed worker finished were found done (by their header) when its shard ran
    # again elsewhere: together, every item exactly once.
    assert summary["migrated"] + summary["unchanged"] == COUNT
    assert set(report) == {"summary", "ok", "failed", "conflicts", "skipped", "would_change"}

    after = get_all(bucket, list(objects))
    for key, data in after.items():
        ids = [r.key_id for r in kmsenvelope.inspect_envelope(data).recipients]
        assert ids == [f"aws-kms:{arn}"], key  # the target exactly once, the old key gone
        assert data.startswith(b"kmsenv1.") == (int(key[-9:-4]) % 3 == 0)  # encoding kept

    # Decrypted with AWS KMS alone: the local provider is not even loaded.
    only_aws = Engine(
        registry=ProviderRegistry.load(allow=["aws-kms"]),
        config=load_config(),
        trusted_keys=[f"aws-kms:{arn}"],
    )

    def opens(key: str) -> bool:
        return only_aws.decrypt(after[key], {"n": str(int(key[-9:-4]))}) == plain[key]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(opens, sorted(after)))


def test_a_worker_without_the_provider_reports_failed_items(
    cluster: Cluster, keystore: Keystore, moto_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    keystore.create_key("old")
    s3 = s3_client(moto_url)
    bucket = new_bucket(s3)
    objects, _plain = envelopes(40)
    put_all(bucket, objects)
    arn = kms_key_arn(moto_url)
    for worker in cluster.workers:  # replace the workers by one that has no aws-kms plugin
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local,stores")
    cluster.start_worker()
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local,aws-kms,stores")  # the driver's own
    cluster.wait_for_workers(1)
    report_path = tmp_path / "report.json"
    proc = cli("migrate", f"s3://{bucket}/{PREFIX}", "--to", f"aws-kms:{arn}",
               "--dask", cluster.address, "--shard-size", "10",
               "--report", str(report_path))  # fmt: skip
    assert proc.returncode == 13, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(report_path.read_text())
    assert report["summary"]["failed"] == 40
    reasons = {item["reason"] for item in report["failed"]}
    assert len(reasons) == 1
    (reason,) = reasons
    assert reason.startswith("not started on worker "), reason
    assert "s3" in reason
    assert get_all(bucket, list(objects)) == objects  # nothing touched
