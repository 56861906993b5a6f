"""A real Dask cluster for the tests: ``dask scheduler`` and ``dask worker`` processes on
127.0.0.1, started (and killed) by the tests, each worker with the environment a user gives it
(AWS endpoint, plugins, keystore and passphrase); and the moto server (S3 and KMS) they use.

The moto pieces are the minimal ones of tests/stores/s3_support.py (a module there, not
importable from here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
AWS_SECRET = "dask-test-secret-key-0123456789"  # distinctive: the tests grep task payloads for it


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server in this process, on a free port of 127.0.0.1 (S3 and KMS)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The AWS chain pointing at moto (nothing of the developer's own), the local, aws-kms and
    stores plugins; a short dask connect timeout (a bad address fails fast)."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "DASK_")):
            monkeypatch.delenv(name)
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_S3": moto_url,
        "KMSENVELOPE_PROVIDERS__AWS_KMS__ENDPOINT_URL": moto_url,
        "KMSENVELOPE_PLUGINS": "local,aws-kms,stores",
        "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def s3_client(moto_url: str) -> Any:
    return boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key=AWS_SECRET,
    )


def kms_key_arn(moto_url: str) -> str:
    """A new symmetric KMS key in moto."""
    kms = boto3.client(
        "kms",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key=AWS_SECRET,
    )
    return str(kms.create_key()["KeyMetadata"]["Arn"])


def new_bucket(s3: Any) -> str:
    name = f"envelopes-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def backend() -> Any:
    """The moto S3 backend the in-process server serves (fast set-up and checks)."""
    return s3_backends[ACCOUNT]["aws"]


def put_all(bucket: str, objects: Mapping[str, bytes]) -> None:
    store = backend()
    for key, data in objects.items():
        store.put_object(bucket, key, data)


def get_all(bucket: str, keys: list[str]) -> dict[str, bytes]:
    store = backend()
    return {key: bytes(store.get_object(bucket, key).value) for key in keys}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m kmsenvelope ARGS`` in the test's environment, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Cluster:
    """A scheduler and worker processes on 127.0.0.1; workers started and killed at will."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "scheduler.json"
        self.logs: list[Path] = []
        self.scheduler = self._spawn(
            "scheduler",
            [
                "distributed.cli.dask_scheduler",
                "--host", "127.0.0.1",
                "--port", "0",
                "--no-dashboard",
                "--scheduler-file", str(self.file),
            ],
        )  # fmt: skip
        self.workers: list[subprocess.Popen[bytes]] = []
        deadline = time.monotonic() + 60
        while not self.file.exists() or not self.file.read_text().strip():
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start: {self.log_text()}")
            time.sleep(0.1)
        self.address = str(json.loads(self.file.read_text())["address"])

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=dict(os.environ),
            )

    def start_worker(self, nthreads: int = 1) -> subprocess.Popen[bytes]:
        """One worker process (no nanny: killing it kills the worker), in this environment."""
        worker = self._spawn(
            "worker",
            [
                "distributed.cli.dask_worker",
                "--scheduler-file", str(self.file),
                "--host", "127.0.0.1",
                "--nthreads", str(nthreads),
                "--no-nanny",
                "--no-dashboard",
                "--memory-limit", "0",
            ],
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` workers are connected to the scheduler."""
        from distributed import Client

        with Client(self.address, set_as_default=False, timeout=30) as client:
            client.wait_for_workers(count, timeout=timeout)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs if p.exists())

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture
def cluster(aws_env: dict[str, str], keystore: Any, tmp_path: Path) -> Iterator[Cluster]:
    """A scheduler and two single-threaded workers, with the keystore, its passphrase and the
    AWS environment in theirs (the fixtures set them before the processes start)."""
    root = tmp_path / "cluster"
    root.mkdir()
    started = Cluster(root)
    try:
        started.start_worker()
        started.start_worker()
        started.wait_for_workers(2)
        yield started
    finally:
        started.stop()
