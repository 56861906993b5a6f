"""One shard of a migration spread over many processes or machines: what its task is told, what
it runs on the worker, and how shard reports merge into the job's report.

A task is told only what is no secret: the store URL (never one with a password), the plan (key
URIs), the trust patterns and key URIs the user named, the concurrency and rate limits, the
configuration file and profile to read *there*, and the keys of its shard. It opens its own
engine and store on the worker, from the worker's configuration, environment and credentials,
and returns a :class:`MigrationReport` of key names and reasons: no credential, passphrase or
data key travels through the scheduler, a task's arguments or its result.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..config import load_config
from ..plugins import ProviderRegistry
from ..rewrapping import RewrapPlan
from .guard import CallPolicy, GuardedEngine
from .runner import SHARD_SIZE, MigrationReport, _migrate
from .store import EnvelopeStore, StoredItem, Writer
from .store_urls import open_store

__all__ = ["SHARD_SIZE", "ShardJob", "failed_shard", "handled", "merge_report", "run_shard"]

KEPT_ENGINES = 4
"""Jobs whose engine a worker process keeps (most recent first): its shards share it."""


@dataclass(frozen=True, slots=True)
class ShardJob:
    """What every task of one job is told (the same for all its shards; picklable, no secret).

    ``rate_limits`` are this worker's share of the job's (calls per second per provider);
    ``concurrency`` bounds the envelopes in flight and the calls per provider in one worker
    process. ``config_path`` and ``profile`` (None: the worker's defaults) are read on the
    worker, as the command line there would read them.
    """

    job_id: str
    store_url: str
    plan: RewrapPlan
    concurrency: int = 8
    dry_run: bool = False
    rate_limits: tuple[tuple[str, float], ...] = ()
    retries: int = 8
    allow: tuple[str, ...] = ()
    trusted_keys: tuple[str, ...] = ()
    allowed_keys: tuple[str, ...] | None = None
    max_unwrap_attempts: int | None = None
    config_path: str | None = None
    profile: str | None = None


class _ShardStore:
    """The worker's store, listing only the shard's keys (reads and writes go to the store)."""

    def __init__(self, store: EnvelopeStore, keys: Sequence[str]) -> None:
        self._store = store
        self._keys = keys

    def list(self) -> Iterable[str]:
        return self._keys

    def read(self, key: str) -> StoredItem:
        return self._store.read(key)

    def write(self, key: str, version: str, writer: Writer) -> bool:
        return self._store.write(key, version, writer)


_engines: OrderedDict[str, GuardedEngine] = OrderedDict()
_engines_lock = threading.Lock()


def _new_engine(job: ShardJob) -> GuardedEngine:
    """An engine from this worker's own plugins and configuration, bounded by the job's
    policy (this worker's share of the rate limits)."""
    config = load_config(job.config_path, profile=job.profile)
    registry = ProviderRegistry.load(skip_broken=True)
    policy = CallPolicy(
        per_provider=job.concurrency, rate_limits=dict(job.rate_limits), retries=job.retries
    )
    return GuardedEngine(
        policy,
        registry=registry,
        config=config,
        allowed_keys=job.allowed_keys,
        allow=job.allow,
        trusted_keys=job.trusted_keys,
        max_unwrap_attempts=job.max_unwrap_attempts,
    )


def _worker_engine(job: ShardJob) -> GuardedEngine:
    """The job's engine in this process: made by its first shard here, shared by the next ones
    (one keystore unlock, one set of KMS clients, one rate limit for the whole process)."""
    with _engines_lock:
        engine = _engines.get(job.job_id)
        if engine is not None:
            _engines.move_to_end(job.job_id)
            return engine
    made = _new_engine(job)  # unlocked: reading the configuration may be slow
    with _engines_lock:
        engine = _engines.setdefault(job.job_id, made)
        while len(_engines) > KEPT_ENGINES:
            _engines.popitem(last=False)
    return engine


def _worker() -> str:
    return f"{socket.gethostname()} (pid {os.getpid()})"


def failed_shard(keys: Sequence[str], reason: str) -> MigrationReport:
    """The report of a shard none of whose items could be done, each failed for ``reason``."""
    report = MigrationReport(total=len(keys))
    report.failed = dict.fromkeys(keys, reason)
    return report


def run_shard(job: ShardJob, keys: Sequence[str]) -> MigrationReport:
    """Re-wrap the envelopes of one shard; runs on a worker, never raises for an item.

    Items already done (a retried shard, a re-run job) are skipped after reading their header
    alone; writes are conditional, so a retry never double-wraps nor overwrites another's
    change. A worker that cannot open the store or its engine fails every item of the shard,
    with the reason (its own plugins, configuration or credentials are missing or wrong).
    """
    try:
        engine = _worker_engine(job)
        store = open_store(job.store_url, engine.registry, engine.config)
    except Exception as exc:  # the worker's own set-up: reported, never raised to the driver
        return failed_shard(keys, f"not started on worker {_worker()}: {_reason(exc)}")
    try:
        before = engine.policy.retried
        report = _migrate(
            _ShardStore(store, keys), engine, job.plan, job.concurrency, None, job.dry_run, (), None
        )
        report.retries = max(0, engine.policy.retried - before)
        return report
    except Exception as exc:  # a store or plugin bug: the shard's items are reported failed
        return failed_shard(keys, f"shard failed on worker {_worker()}: {_reason(exc)}")
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()


def _reason(exc: BaseException) -> str:
    """One line: the error's type and message."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def merge_report(into: MigrationReport, part: MigrationReport) -> None:
    """Add a shard's report to the job's (the job's ``seconds`` are the driver's own)."""
    into.total += part.total
    into.migrated += part.migrated
    into.unchanged += part.unchanged
    into.skipped += part.skipped
    into.skip_reasons.update(part.skip_reasons)
    into.already_done += part.already_done
    into.failed.update(part.failed)
    into.conflicts += part.conflicts
    into.would_change.update(part.would_change)
    into.retries += part.retries


def handled(report: MigrationReport) -> tuple[int, int]:
    """``(done, failed)`` items of a report (failed counts conflicts too), for progress."""
    failed = len(report.failed) + len(report.conflicts)
    done = (
        len(report.migrated)
        + len(report.unchanged)
        + len(report.skipped)
        + report.already_done
        + len(report.would_change)
    )
    return done, failed
