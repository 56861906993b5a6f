"""The bulk re-wrap engine: every envelope in a store, concurrently, verified, resumable."""

from __future__ import annotations

import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from ..engine import Engine
from ..errors import KmsEnvelopeError, MalformedEnvelopeError
from ..format.compact import ArmorWriter, PrefixedReader, open_envelope_stream
from ..format.header import MAGIC, read_header
from ..kek import KeyEncryptionKey, WrappedKey
from ..rewrapping import RewrapPlan, matches, rewrap_header
from ..trust import KeyRecognizer
from .guard import CallPolicy, JobCancelled
from .journal import Journal
from .store import EnvelopeStore, ItemSkipped, VersionedStore
from .store_urls import open_store

if TYPE_CHECKING:
    from .distributed import DaskClient

__all__ = ["MigrationInterrupted", "MigrationProgress", "MigrationReport", "migrate"]

_MAGIC_PREFIX = MAGIC[:-1]
NOT_AN_ENVELOPE = "not an envelope"
LIST_AHEAD = 100_000
"""Keys a store may have listed ahead of the work (about 10 MB of keys): a job over millions of
items holds this many at most, and one over fewer knows its total (and ETA) early."""
SHARD_SIZE = 500
"""Keys per task of a job run on an executor: large enough that a task's set-up (store client,
engine) is paid once for many envelopes, small enough that a lost worker costs little to redo."""


@dataclass
class MigrationReport:
    """What happened to every item; ``ok`` is True when nothing failed or conflicted and the
    job ran to the end. ``left`` counts items an interrupted job listed but did not finish."""

    total: int = 0
    migrated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    skip_reasons: dict[str, str] = field(default_factory=dict)
    already_done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    would_change: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    retries: int = 0
    interrupted: bool = False
    left: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.conflicts and not self.interrupted

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "migrated": len(self.migrated),
            "unchanged": len(self.unchanged),
            "skipped": len(self.skipped),
            "already_done": self.already_done,
            "failed": len(self.failed),
            "conflicts": len(self.conflicts),
            "would_change": len(self.would_change),
            "interrupted": self.interrupted,
            "left": self.left,
            "seconds": round(self.seconds, 3),
            "provider_retries": self.retries,
        }

    def to_json(self) -> dict[str, Any]:
        """Everything a report file holds: the summary, and each failure and why."""
        return {
            "summary": self.summary(),
            "ok": self.ok,
            "failed": [{"key": k, "reason": v} for k, v in sorted(self.failed.items())],
            "conflicts": [
                {"key": k, "reason": "changed by someone else during the job; not overwritten"}
                for k in sorted(self.conflicts)
            ],
            "skipped": [
                {"key": k, "reason": self.skip_reasons.get(k, NOT_AN_ENVELOPE)}
                for k in sorted(self.skipped)
            ],
            "would_change": [{"key": k, "change": v} for k, v in sorted(self.would_change.items())],
        }


class MigrationInterrupted(KeyboardInterrupt):
    """Ctrl-C (or another interrupt) stopped the job; ``report`` says what was done.

    Raised after the job has stopped cleanly: nothing new was started, envelopes already past
    their provider calls were written (and journaled), the others were left as they were.
    ``interrupt`` is the original ``KeyboardInterrupt``; a resumed job continues from here.
    """

    def __init__(self, report: MigrationReport, interrupt: KeyboardInterrupt) -> None:
        super().__init__("migration interrupted")
        self.report = report
        self.interrupt = interrupt


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """A snapshot handed to the progress callback after each item. ``total`` counts the items
    listed so far; while ``listing`` is True the store has not listed them all yet."""

    done: int
    failed: int
    total: int
    elapsed: float
    listing: bool = False

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if self.listing:
            return None  # the total is not known yet
        left = self.total - self.done - self.failed
        return left / self.rate if self.rate > 0 else None


def _envelope_reader(stream: BinaryIO) -> tuple[BinaryIO, str] | None:
    """The binary envelope in ``stream`` and its encoding, by the format's one rule (section
    8, the core's ``open_envelope_stream``): the binary magic at the first byte, or the compact
    prefix after any amount of SP, HT, CR, LF (skipped a block at a time, never held). None
    for anything else (empty or blank files, text, images): not an envelope, skipped."""
    try:
        reader, encoding = open_envelope_stream(stream)
    except MalformedEnvelopeError:
        return None  # whitespace, then not the compact prefix
    if encoding == "compact":
        return reader, encoding
    head = reader.read(len(_MAGIC_PREFIX))
    if head != _MAGIC_PREFIX:
        return None
    return PrefixedReader(head, reader), encoding  # type: ignore[return-value]


def _describe_plan(plan: RewrapPlan, recipients: Sequence[str]) -> str | None:
    """Dry run: what the plan would change, judged from the header alone (no provider calls)."""
    from ..kek import WrappedKey

    stanzas = [WrappedKey(r.partition(":")[0], r, "?", b"?") for r in recipients]
    removed = [
        r.key_id
        for r in stanzas
        if r.provider in plan.remove_providers or any(matches(s, r) for s in plan.remove)
    ]
    remaining = [r for r in stanzas if r.key_id not in removed]
    added = [
        s if isinstance(s, str) else s.key_id
        for s in plan.add
        if not any(matches(s, r) for r in remaining)
    ]
    parts = []
    if added:
        parts.append("add " + ", ".join(added))
    if removed:
        parts.append("remove " + ", ".join(removed))
    if plan.rotate:
        parts.append("rotate to current key versions")
    if remaining == [] and not added:
        return "error: would remove every recipient"
    return "; ".join(parts) or None


def plan_already_met(
    engine: Engine,
    plan: RewrapPlan,
    recipients: Sequence[WrappedKey],
    keys: Sequence[KeyEncryptionKey] = (),
) -> bool:
    """Whether an envelope with these recipients already is what ``plan`` makes of it, judged
    from its header: nothing to remove, every key to add present, no rotation asked.

    No wrap or unwrap call is made. A key to add named otherwise than it is recorded (an AWS
    alias, recorded as the key ARN) is recognized by the key itself (``KeyRecognizer``: one
    lookup per opened key, remembered, never one per envelope).
    """
    if plan.rotate or plan.empty:
        return False  # the current versions are only known by asking the providers
    for r in recipients:
        if r.provider in plan.remove_providers or any(matches(s, r) for s in plan.remove):
            return False
    return all(_present(engine, s, recipients, keys) for s in plan.add)


def _present(
    engine: Engine,
    selector: str | KeyEncryptionKey,
    recipients: Sequence[WrappedKey],
    keys: Sequence[KeyEncryptionKey],
) -> bool:
    """Whether the key ``selector`` names is among ``recipients`` (by URI, then by the key)."""
    if any(matches(selector, r) for r in recipients):
        return True
    if isinstance(selector, str):
        supplied = [k for k in keys if k.key_id == selector]
        # The provider's own key object (a GuardedEngine's hides the optional methods); opened
        # once per engine and cached, as the wrap that would follow opens it anyway.
        kek = supplied[0] if supplied else Engine.open_key(engine, selector)
    else:
        kek = selector
    if not isinstance(kek, KeyRecognizer):
        return False
    return any(kek.recognizes(r.key_id) for r in recipients)


class _Job:
    def __init__(
        self,
        store: EnvelopeStore,
        engine: Engine,
        plan: RewrapPlan,
        journal: Journal | None,
        dry_run: bool,
        keys: Sequence[KeyEncryptionKey],
    ) -> None:
        self.store = store
        self.engine = engine
        self.plan = plan
        self.journal = journal
        self.dry_run = dry_run
        self.keys = keys
        self.report = MigrationReport()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.handled = 0  # items given an outcome in this run

    def stop(self) -> None:
        """No new item starts; in-flight items stop at their next provider call."""
        self.stopping.set()
        policy = getattr(self.engine, "policy", None)
        if isinstance(policy, CallPolicy):
            policy.cancel()

    def allow_calls_again(self) -> None:
        """After the workers stopped: the engine's policy may serve another job."""
        policy = getattr(self.engine, "policy", None)
        if isinstance(policy, CallPolicy):
            policy.reset()

    def outcome(
        self, key: str, status: str, reason: str | None = None, version: str | None = None
    ) -> None:
        with self.lock:
            self.handled += 1
            if status == "done":
                self.report.migrated.append(key)
            elif status == "unchanged":
                self.report.unchanged.append(key)
            elif status == "skipped":
                self.report.skipped.append(key)
                if reason:
                    self.report.skip_reasons[key] = reason
            elif status == "conflict":
                self.report.conflicts.append(key)
            elif status == "would-change":
                self.report.would_change[key] = reason or ""
            else:
                self.report.failed[key] = reason or "failed"
        if self.journal is not None and not self.dry_run:
            self.journal.record(key, status, reason, version=version)

    def earlier(self, key: str, status: str, reason: str | None) -> None:
        """The journal shows ``key`` finished and unchanged since: count it, touch nothing."""
        with self.lock:
            self.handled += 1
            if status == "skipped":  # not an envelope, as the last run found
                self.report.skipped.append(key)
                if reason:
                    self.report.skip_reasons[key] = reason
            elif status == "unchanged":
                self.report.unchanged.append(key)
            else:
                self.report.already_done += 1

    def run_one(self, key: str) -> None:
        if self.stopping.is_set():
            return  # interrupted before it started: a resumed job does it
        try:
            self._run_one(key)
        except ItemSkipped as skip:
            self.outcome(key, "skipped", str(skip) or None)
        except JobCancelled:
            pass  # stopped at a provider call: left exactly as it was, not journaled
        except KmsEnvelopeError as exc:
            self.outcome(key, "failed", f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            self.outcome(key, "failed", f"I/O error: {exc.strerror or exc}")
        except Exception as exc:  # a plugin bug must not stop the job
            self.outcome(key, "failed", f"unexpected {type(exc).__name__}: {exc}")

    def _run_one(self, key: str) -> None:
        item = self.store.read(key)
        with item.stream as stream:
            earlier = self.journal.finished(key, item.version) if self.journal else None
            if earlier is not None:
                self.earlier(key, *earlier)
                return
            opened = _envelope_reader(stream)
            if opened is None:
                self.outcome(key, "skipped", version=item.version)
                return
            reader, encoding = opened
            header, _size = read_header(reader, self.engine.limits)
            if self.dry_run:
                change = _describe_plan(self.plan, [r.key_id for r in header.recipients])
                self.outcome(key, "would-change" if change else "unchanged", change)
                return
            if plan_already_met(self.engine, self.plan, header.recipients, self.keys):
                # Done already (an earlier or a retried job): judged from the header alone,
                # without a provider call, so re-running a job costs one read per item.
                self.outcome(key, "unchanged", version=item.version)
                return
            result = rewrap_header(self.engine, header, self.plan, self.keys)
            if not result.changed:
                self.outcome(key, "unchanged", version=item.version)
                return

            def write(dst: BinaryIO) -> None:
                sink: Any = ArmorWriter(dst) if encoding == "compact" else dst
                sink.write(result.header)
                shutil.copyfileobj(reader, sink, 1 << 20)
                if encoding == "compact":
                    sink.finish()

            if self.store.write(key, item.version, write):
                # The new version, if the store tells it: a resumed job skips the item only
                # while it stays so (without it, a resumed job reads its header again).
                store = self.store
                version = (
                    store.pop_written_version(key) if isinstance(store, VersionedStore) else None
                )
                self.outcome(key, "done", version=version)
            else:
                self.outcome(key, "conflict", "changed by someone else during the job")


def migrate(
    store: EnvelopeStore | str,
    engine: Engine,
    plan: RewrapPlan,
    *,
    concurrency: int = 8,
    journal: Journal | None = None,
    dry_run: bool = False,
    keys: Sequence[KeyEncryptionKey] = (),
    progress: Callable[[MigrationProgress], None] | None = None,
    executor: Executor | DaskClient | None = None,
    shard_size: int = SHARD_SIZE,
) -> MigrationReport:
    """Re-wrap every envelope in ``store`` by ``plan``; never raises for one bad item.

    ``store`` is an :class:`EnvelopeStore`, or a store URL (``sqlite:///app.db?table=…``)
    opened through the stores ``engine.registry`` holds, configured by ``engine.config``, and
    closed when the job ends.

    Items the journal records as finished, and unchanged since (the same version token), are
    not touched again; a changed one is looked at afresh. Each re-wrapped envelope is
    verified before the store replaces it (conditionally: a concurrently changed item is
    reported as a conflict, not overwritten).

    On ``KeyboardInterrupt`` (Ctrl-C) the job stops promptly -- nothing new starts, calls
    waiting on a rate limit or backoff are abandoned (a ``GuardedEngine``'s policy) -- and
    :class:`MigrationInterrupted` is raised with the report of what was done.

    ``executor`` (a ``dask.distributed.Client``, or any ``concurrent.futures.Executor``, a
    ``ProcessPoolExecutor`` too) runs the job past this process: the keys are listed here and
    sent ``shard_size`` at a time as tasks, each opening its own store and engine on its worker
    from the worker's configuration and credentials (:mod:`kmsenvelope.migrate.distributed`).
    ``store`` must then be a store URL; there is no journal (an envelope already done is
    skipped after reading its header, so running the job again is safe), and ``concurrency``
    and ``engine``'s rate limits are per worker process, the limits divided among the workers.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if executor is not None:
        return _migrate_on(
            executor,
            store,
            engine,
            plan,
            concurrency=concurrency,
            journal=journal,
            dry_run=dry_run,
            keys=keys,
            progress=progress,
            shard_size=shard_size,
        )
    if isinstance(store, str):
        opened = open_store(store, engine.registry, engine.config)
        try:
            return _migrate(opened, engine, plan, concurrency, journal, dry_run, keys, progress)
        finally:
            close = getattr(opened, "close", None)
            if callable(close):
                close()
    return _migrate(store, engine, plan, concurrency, journal, dry_run, keys, progress)


def _migrate_on(
    executor: Executor | DaskClient,
    store: EnvelopeStore | str,
    engine: Engine,
    plan: RewrapPlan,
    *,
    concurrency: int,
    journal: Journal | None,
    dry_run: bool,
    keys: Sequence[KeyEncryptionKey],
    progress: Callable[[MigrationProgress], None] | None,
    shard_size: int,
) -> MigrationReport:
    """:func:`migrate` with an ``executor``; what cannot travel to workers is refused."""
    if journal is not None:
        raise ValueError(
            "a job run on an executor keeps no journal: an envelope already re-wrapped is "
            "skipped after reading its header, so run the same job again to resume it"
        )
    if keys:
        raise TypeError("keys cannot be sent to workers: they open keys by URI themselves")
    from .distributed import migrate_sharded  # imports no dask; it is used only when given

    if not isinstance(store, str):
        raise TypeError(
            "a job run on an executor needs a store URL (s3://…, az://…, postgresql://…, "
            "sqlite:///…): each worker opens the store itself; a store object cannot be sent"
        )
    return migrate_sharded(
        executor,
        store,
        engine,
        plan,
        concurrency=concurrency,
        dry_run=dry_run,
        shard_size=shard_size,
        progress=progress,
    )


def _migrate(
    store: EnvelopeStore,
    engine: Engine,
    plan: RewrapPlan,
    concurrency: int,
    journal: Journal | None,
    dry_run: bool,
    keys: Sequence[KeyEncryptionKey],
    progress: Callable[[MigrationProgress], None] | None,
) -> MigrationReport:
    """:func:`migrate` on an opened store."""
    start = time.monotonic()
    job = _Job(store, engine, plan, journal, dry_run, keys)
    lister = _ListAhead(store.list())
    finished = 0

    def tick() -> None:
        if progress is not None:
            with job.lock:
                failed = len(job.report.failed) + len(job.report.conflicts)
            progress(
                MigrationProgress(
                    finished - failed,
                    failed,
                    lister.count,
                    time.monotonic() - start,
                    listing=not lister.finished,
                )
            )

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="migrate")
    pending: set[Future[None]] = set()
    try:
        # Work starts with the first listed key; at most ``concurrency * 4`` items are queued
        # in the pool, and the listing runs at most LIST_AHEAD keys ahead of them.
        for key in lister:
            job.report.total += 1  # a journaled item too: its version is checked when read
            if len(pending) >= concurrency * 4:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                finished += len(done)
                tick()
            pending.add(pool.submit(job.run_one, key))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            finished += len(done)
            tick()
    except KeyboardInterrupt as interrupt:
        # Stop promptly: queued items are dropped, in-flight ones stop at their next provider
        # call (or finish their write); then say what was done.
        lister.stop()
        job.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        job.allow_calls_again()
        _finish(job, engine, start)
        job.report.interrupted = True
        job.report.total = max(job.report.total, lister.count)
        job.report.left = job.report.total - job.handled
        raise MigrationInterrupted(job.report, interrupt) from interrupt
    finally:
        lister.stop()
        pool.shutdown(wait=True)
    _finish(job, engine, start)
    if journal is not None and not dry_run and job.report.ok:
        journal.complete(job.report.summary())
    return job.report


_END = object()


class _ListingFailed:
    """The exception the store's listing raised, carried to the job's thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _ListAhead:
    """A store's keys, listed in a background thread at most :data:`LIST_AHEAD` ahead of the
    job: the job starts on the first page, the total is known as soon as the listing ends, and
    a failed listing is raised in the job's thread. ``count`` keys listed so far."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = keys
        self._queue: queue.Queue[object] = queue.Queue(maxsize=LIST_AHEAD)
        self._stopping = threading.Event()
        self.count = 0
        self.finished = False
        self._thread = threading.Thread(
            target=self._run, name="kmsenvelope-migrate-list", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        """Queue ``item`` unless the job stopped (then False)."""
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for key in self._keys:
                if not self._put(key):
                    return
                self.count += 1
            self.finished = True
            self._put(_END)
        except BaseException as exc:  # handed to the job's thread, which raises it
            self._put(_ListingFailed(exc))

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _ListingFailed):
                raise item.error
            yield str(item)

    def stop(self) -> None:
        """Stop listing (the job ended or was interrupted) and wait a little for the thread."""
        self._stopping.set()
        self._thread.join(timeout=5)


def _finish(job: _Job, engine: Engine, start: float) -> None:
    job.report.seconds = time.monotonic() - start
    policy = getattr(engine, "policy", None)
    job.report.retries = int(getattr(policy, "retried", 0))
