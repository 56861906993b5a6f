"""Issue 5, "Done when" (fault injection): migrating to aws-kms while ~20% of KMS calls answer
ThrottlingException or a 5xx completes with nothing lost; an envelope that can never be unwrapped
(its only recipient is a destroyed local key version) is reported with the reason, does not stop
the others, and the exit code is 13. The real CLI talks to moto through the fault-injecting KMS
front end of ``tests/aws/aws_testing.py``.

The provider's own retries are switched off (``max_attempts = 1``) so that every injected fault
reaches the migration's retry layer (``CallPolicy``), which the report counts.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from integration_world import (
    Corpus,
    World,
    assert_report,
    check_corpus,
    create_kms_key,
    leftovers,
    make_corpus,
    recipients_of,
)

if TYPE_CHECKING:
    from aws_testing import FaultInjectingKms

COUNT = 300
SHARE = 0.2
# (AWS error code, HTTP status, share of all calls of an operation)
FAULTS = [
    ("ThrottlingException", 400, 0.10),
    ("KMSInternalException", 500, 0.05),
    ("ServiceUnavailableException", 503, 0.05),
]


@dataclass
class Setup:
    world: World
    proxy: FaultInjectingKms
    moto: str
    arn: str
    data: Path
    corpus: Corpus
    doomed: Path


class FaultDice:
    """Decides, per request, whether a fault answers it; counts what was injected."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()

    def install(self, proxy: FaultInjectingKms, operations: Iterable[str]) -> None:
        for operation in operations:
            left = 1.0
            for code, status, share in FAULTS:
                # P(this fault) = share, given that the earlier faults of the list said no
                proxy.fail(
                    operation,
                    code,
                    "injected",
                    status=status,
                    times=None,
                    when=self._roll(operation, code, share / left),
                )
                left -= share

    def _roll(self, operation: str, code: str, chance: float) -> Any:
        def when(_body: dict[str, Any]) -> bool:
            with self._lock:
                hit = self._rng.random() < chance
                if hit:
                    self.injected[operation] += 1
                    self.injected[code] += 1
                return hit

        return when

    def total(self, operations: Iterable[str]) -> int:
        return sum(self.injected[op] for op in operations)


@pytest.fixture
def setup(world: World, moto_endpoint: str) -> Iterator[Setup]:
    """local:src/2 wraps COUNT envelopes; one more envelope is wrapped only by local:src/1,
    which is then destroyed. A KMS key in moto, reached through the fault-injecting proxy."""
    from aws_testing import FaultInjectingKms

    assert world.cli("keys", "create", "src").returncode == 0
    data = world.root / "data"
    doomed = data / "aaa-doomed" / "lost-key.bin"
    doomed.parent.mkdir(parents=True)
    doomed.write_bytes(world.engine().encrypt(b"wrapped only by version 1", ["local:src"]))
    assert world.cli("keys", "rotate", "src").returncode == 0
    corpus = make_corpus(
        world.engine(), data, ["local:src"], count=COUNT, compact=10, multi_chunk=20, seed=13
    )
    made = world.cli("keys", "destroy", "src", "--version", "1", "--yes")
    assert made.returncode == 0, made.stderr

    arn = create_kms_key(moto_endpoint, f"faults {uuid.uuid4()}")
    world.allow("local:src", f"aws-kms:{arn}")
    proxy = FaultInjectingKms(upstream=moto_endpoint)
    proxy.start()
    world.configure(
        "aws-kms",
        {"endpoint_url": proxy.url, "max_attempts": 1, "backoff_base": 0.01, "backoff_max": 0.1},
    )
    try:
        yield Setup(world, proxy, moto_endpoint, arn, data, corpus, doomed)
    finally:
        proxy.stop()


def _migrate_and_check(setup: Setup, dice: FaultDice, operations: list[str]) -> None:
    world, doomed = setup.world, setup.doomed
    doomed_bytes = doomed.read_bytes()
    report = world.root / "report.json"
    done = world.cli(
        "migrate",
        setup.data,
        "--to",
        f"aws-kms:{setup.arn}",
        "--remove-provider",
        "local",
        "--concurrency",
        "16",
        "--report",
        report,
    )
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr

    calls = sum(setup.proxy.count(op) for op in operations)
    injected = dice.total(operations)
    assert calls > COUNT
    assert SHARE / 2 < injected / calls < SHARE * 1.5, (injected, calls, dice.injected)

    # Nothing lost: every other envelope moved to AWS and opens without the keystore, straight
    # from moto (no proxy); the doomed one is reported with the reason and left as it was.
    assert_report(report, migrated=COUNT, failed={str(doomed): "destroyed"})
    assert done.returncode == 13, stderr[-3000:]
    assert f"failed: {doomed}" in stderr
    world.keystore.rename(world.root / "keystore-gone")
    direct = world.engine(aws_kms={"endpoint_url": setup.moto, "max_attempts": 5})
    check_corpus(direct, setup.corpus, [f"aws-kms:{setup.arn}"])
    assert doomed.read_bytes() == doomed_bytes
    assert recipients_of(doomed_bytes) == ["local:src/1"]
    assert leftovers(setup.data) == []


def test_20_percent_faults_on_every_kms_call_lose_nothing(setup: Setup) -> None:
    dice = FaultDice(seed=20)
    operations = ["DescribeKey", "Encrypt", "Decrypt"]
    dice.install(setup.proxy, operations)
    _migrate_and_check(setup, dice, operations)
    summary = json.loads((setup.world.root / "report.json").read_text())["summary"]
    # With max_attempts = 1 every injected fault -- on resolve, wrap and the verification
    # unwrap alike -- is retried exactly once by the migration's call policy. A loaded machine
    # may add a real transient failure of its own (seen once in CI: 186 retries for 185
    # injected faults, with the CPU saturated): at most two such are tolerated; a retry per
    # fault more (or none) is still caught.
    injected = dice.total(operations)
    assert injected > 0
    assert injected <= summary["provider_retries"] <= injected + 2, dict(dice.injected)


def test_one_throttled_verification_unwrap_is_retried(world: World, moto_endpoint: str) -> None:
    """Regression: the unwrap that verifies a new recipient goes through the call policy too
    (it once bypassed it, so one throttled verification failed the envelope)."""
    from aws_testing import FaultInjectingKms

    assert world.cli("keys", "create", "one").returncode == 0
    data = world.root / "data"
    data.mkdir()
    envelope = data / "one.bin"
    envelope.write_bytes(world.engine().encrypt(b"one", ["local:one"]))
    arn = create_kms_key(moto_endpoint)
    proxy = FaultInjectingKms(upstream=moto_endpoint)
    proxy.start()
    try:
        world.configure("aws-kms", {"endpoint_url": proxy.url, "max_attempts": 1})
        proxy.fail("Decrypt", "ThrottlingException", "Rate exceeded", times=1)
        done = world.cli("migrate", data, "--to", f"aws-kms:{arn}", "--remove-provider", "local")
    finally:
        proxy.stop()
    assert proxy.count("Decrypt") >= 1
    assert done.returncode == 0, done.stderr.decode()
    assert recipients_of(envelope.read_bytes()) == [f"aws-kms:{arn}"]
