"""Migration past one machine: the driver lists the store's keys lazily and sends them, a shard
at a time, as tasks to a ``concurrent.futures.Executor`` or a Dask cluster; each task opens its
own store and engine on its worker (:mod:`.shards`) and returns a report the driver merges.

dask is imported here only, and only when a Dask cluster is asked for (:func:`dask_session`, or
a ``dask.distributed.Client`` handed to :func:`migrate_sharded`): the core and the command line
never import it otherwise.

The job's ``--rate-limit`` (a :class:`GuardedEngine`'s rate limits) is shared out: each worker
process gets the limit divided by the number of workers counted when the job starts, and while
any rate limit is set at most that many shards are in flight, so the cluster as a whole never
exceeds it even if workers join later. ``concurrency`` is per worker process.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, CancelledError, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ..engine import Engine
from ..errors import ConfigError
from ..rewrapping import RewrapPlan
from ..trust import TrustSettings
from .guard import CallPolicy
from .runner import MigrationInterrupted, MigrationProgress, MigrationReport, _ListAhead
from .shards import SHARD_SIZE, ShardJob, failed_shard, handled, merge_report, run_shard
from .store import EnvelopeStore
from .store_urls import is_store_url, open_store, parse_store_url

__all__ = ["DaskClient", "DaskSession", "dask_session", "migrate_sharded", "shard_job"]

WORKER_WAIT = 60.0
"""Seconds ``--dask ADDRESS`` waits for a first worker to join the cluster."""


class DaskClient(Protocol):
    """What is used of a ``dask.distributed.Client`` (typed without importing dask)."""

    def get_executor(self, *, pure: bool = ...) -> Executor:
        """A ``concurrent.futures.Executor`` submitting tasks to the cluster."""
        ...

    def nthreads(self) -> Mapping[str, int]:
        """Threads of each worker, by address."""
        ...


def _plan_uris(plan: RewrapPlan) -> None:
    """A plan sent to workers names its keys by URI: a key object cannot travel."""
    for selector in (*plan.add, *plan.remove):
        if not isinstance(selector, str):
            raise TypeError(
                "a job run on an executor names its keys by URI: a KeyEncryptionKey object "
                "cannot be sent to the workers"
            )


def shard_job(
    url: str,
    engine: Engine,
    plan: RewrapPlan,
    *,
    concurrency: int,
    dry_run: bool,
    workers: int,
    config_path: str | None = None,
    profile: str | None = None,
) -> ShardJob:
    """What each task of the job is told: the store URL, plan, trust and limits of ``engine``
    (its rate limits divided among ``workers``), never a secret.

    A store URL with a password is refused: workers take it from their own environment.
    """
    if not isinstance(url, str) or not is_store_url(url):
        raise TypeError(
            "a job run on an executor needs a store URL (s3://…, az://…, postgresql://…, "
            "sqlite:///…): each worker opens the store itself; a store object cannot be sent"
        )
    parsed = parse_store_url(url)
    if parsed.password is not None:
        raise ConfigError(
            f"store URL {parsed.text}: a password is never sent to the workers; give it to them "
            "in their own environment or configuration (e.g. PGPASSWORD, ~/.pgpass) instead"
        )
    _plan_uris(plan)
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    trust = getattr(engine, "_trust_settings", None)
    if not isinstance(trust, TrustSettings):
        trust = TrustSettings()
    policy = getattr(engine, "policy", None)
    limits: Mapping[str, float] = {}
    retries = CallPolicy.retries
    if isinstance(policy, CallPolicy):
        limits, retries = policy.rate_limits, policy.retries
    share = max(1, workers)
    return ShardJob(
        job_id=uuid.uuid4().hex,
        store_url=url,
        plan=plan,
        concurrency=concurrency,
        dry_run=dry_run,
        rate_limits=tuple(sorted((s, n / share) for s, n in limits.items())),
        retries=retries,
        allow=trust.allow,
        trusted_keys=trust.trusted_keys,
        allowed_keys=trust.allowed_keys,
        max_unwrap_attempts=trust.max_unwrap_attempts,
        config_path=config_path,
        profile=profile,
    )


def _client_of(executor: object) -> DaskClient | None:
    """The Dask client behind ``executor`` (a Client, or the Executor one made), if any."""
    for candidate in (executor, getattr(executor, "_client", None)):
        if callable(getattr(candidate, "nthreads", None)) and callable(
            getattr(candidate, "get_executor", None)
        ):
            return candidate  # type: ignore[return-value]
    return None


def _as_executor(executor: Executor | DaskClient) -> tuple[Executor, int]:
    """A ``concurrent.futures.Executor`` for ``executor``, and how many worker processes it
    has (a Dask cluster's workers now; a process pool's ``max_workers``; else 1)."""
    client = _client_of(executor)
    if client is not None:
        workers = len(client.nthreads())
        pool = executor if isinstance(executor, Executor) else client.get_executor(pure=False)
        return pool, max(1, workers)
    if isinstance(executor, Executor):
        count = getattr(executor, "_max_workers", None)
        return executor, count if isinstance(count, int) and count > 0 else 1
    raise TypeError(
        "executor must be a dask.distributed.Client or a concurrent.futures.Executor, "
        f"not {type(executor).__name__}"
    )


def migrate_sharded(
    executor: Executor | DaskClient,
    url: str,
    engine: Engine,
    plan: RewrapPlan,
    *,
    concurrency: int = 8,
    dry_run: bool = False,
    shard_size: int = SHARD_SIZE,
    progress: Callable[[MigrationProgress], None] | None = None,
    listing: EnvelopeStore | None = None,
    config_path: str | None = None,
    profile: str | None = None,
) -> MigrationReport:
    """Re-wrap every envelope of the store ``url`` names, in shards run by ``executor``.

    The keys are listed here (through ``listing``, or the store ``url`` opened with
    ``engine``'s plugins and configuration), lazily, and sent ``shard_size`` at a time; a
    bounded number of shards is in flight. Each shard runs :func:`.shards.run_shard` on a
    worker, which reads its own configuration (``config_path`` and ``profile`` there, else its
    defaults). The merged report has the form of a local job's. Ctrl-C cancels the shards not
    started and raises :class:`MigrationInterrupted` with what finished shards did; shards
    already running finish on their workers (a re-run skips what they did by its header).
    """
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    pool, workers = _as_executor(executor)
    job = shard_job(
        url,
        engine,
        plan,
        concurrency=concurrency,
        dry_run=dry_run,
        workers=workers,
        config_path=config_path,
        profile=profile,
    )
    in_flight = workers if job.rate_limits else 2 * workers
    store = listing if listing is not None else open_store(url, engine.registry, engine.config)
    try:
        return _drive(pool, job, store, in_flight, shard_size, progress)
    finally:
        if listing is None:
            close = getattr(store, "close", None)
            if callable(close):
                close()


def _batches(keys: Iterable[str], size: int) -> Iterator[tuple[str, ...]]:
    """``keys`` in tuples of ``size`` (the last one shorter)."""
    batch: list[str] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield tuple(batch)
            batch = []
    if batch:
        yield tuple(batch)


def _drive(
    pool: Executor,
    job: ShardJob,
    store: EnvelopeStore,
    in_flight: int,
    shard_size: int,
    progress: Callable[[MigrationProgress], None] | None,
) -> MigrationReport:
    """Submit the shards as the listing yields them, at most ``in_flight`` at a time, and
    merge their reports as they finish."""
    start = time.monotonic()
    report = MigrationReport()
    lister = _ListAhead(store.list())
    pending: dict[Future[MigrationReport], tuple[str, ...]] = {}

    def collect(finished: Iterable[Future[MigrationReport]]) -> None:
        for future in finished:
            merge_report(report, _outcome(future, pending.pop(future)))
        if progress is not None:
            done, failed = handled(report)
            progress(
                MigrationProgress(
                    done,
                    failed,
                    lister.count,
                    time.monotonic() - start,
                    listing=not lister.finished,
                )
            )

    try:
        for shard in _batches(lister, shard_size):
            while len(pending) >= in_flight:
                collect(wait(pending, return_when=FIRST_COMPLETED).done)
            pending[pool.submit(run_shard, job, shard)] = shard
        while pending:
            collect(wait(pending, return_when=FIRST_COMPLETED).done)
    except KeyboardInterrupt as interrupt:
        lister.stop()
        for future in pending:
            future.cancel()
        listed = max(lister.count, report.total + sum(len(s) for s in pending.values()))
        report.seconds = time.monotonic() - start
        report.interrupted = True
        report.left = listed - report.total
        report.total = listed
        raise MigrationInterrupted(report, interrupt) from interrupt
    except BaseException:  # the listing failed: no shard is left running for nothing
        for future in pending:
            future.cancel()
        raise
    finally:
        lister.stop()
    report.seconds = time.monotonic() - start
    return report


def _outcome(future: Future[MigrationReport], keys: tuple[str, ...]) -> MigrationReport:
    """A finished shard's report; a shard whose task itself failed (lost on the cluster,
    cancelled, not runnable there) fails each of its items with the reason."""
    try:
        part = future.result()
    except CancelledError:
        return failed_shard(keys, "its shard's task was cancelled on the cluster")
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else ""
        return failed_shard(keys, f"its shard's task failed: {type(exc).__name__}: {text}")
    if not isinstance(part, MigrationReport):
        return failed_shard(keys, f"its shard's task returned a {type(part).__name__}")
    return part


@dataclass(frozen=True)
class DaskSession:
    """A connected Dask client: where it runs, its dashboard (if served), its workers."""

    client: DaskClient
    where: str
    dashboard: str | None
    workers: int


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            "--dask needs dask.distributed on this machine: pip install 'kmsenvelope[dask]'"
        ) from None
    return distributed


@contextmanager
def dask_session(address: str) -> Iterator[DaskSession]:
    """A client of the Dask scheduler at ``address`` (``tcp://HOST:PORT``, or any address
    dask accepts), or of a ``LocalCluster`` of worker processes on this machine for
    ``"local"``; closed (the local cluster stopped) on exit. A scheduler that cannot be
    reached, or that no worker joins within :data:`WORKER_WAIT` seconds, is a ``ConfigError``.
    The connect timeout is dask's (``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT``)."""
    distributed = _import_distributed()
    cluster: Any = None
    client: Any = None
    try:
        if address == "local":
            cluster = distributed.LocalCluster(
                processes=True,
                threads_per_worker=1,
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR,
            )
            client = distributed.Client(cluster, set_as_default=False)
            where = "a local Dask cluster"
        else:
            client = _connect(distributed, address)
            where = f"the Dask cluster at {address}"
        yield DaskSession(client, where, _dashboard(client), len(client.nthreads()))
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _connect(distributed: Any, address: str) -> Any:
    """A client of the scheduler at ``address``, once a worker has joined."""
    try:
        client = distributed.Client(address, set_as_default=False)
    except Exception as exc:  # a bad or unreachable address: a user mistake, one line
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--dask {address}: cannot connect to a Dask scheduler: {text}") from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except Exception:
        client.close()
        raise ConfigError(
            f"--dask {address}: no worker joined the Dask cluster within {WORKER_WAIT:.0f} s"
        ) from None
    return client


def _dashboard(client: Any) -> str | None:
    """The cluster's dashboard link, if the scheduler serves one."""
    try:
        if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
            return None
        return str(client.dashboard_link)
    except Exception:
        return None
