"""Bulk re-wrap ("migration") of envelopes wherever they live, without losing any.

``migrate(store, engine, plan)`` re-wraps every envelope in an :class:`EnvelopeStore` --
:class:`FilesystemStore` for files and trees, :class:`SqliteStore` for a table column, or
your own (three methods: ``list``, ``read``, conditional ``write``), or in the store a URL
names (``sqlite:///app.db?table=…``: :func:`open_store`, through the stores plugins register
with ``kmsenvelope_register_stores``) -- concurrently, with
per-provider bounds and retries (:class:`GuardedEngine`, :class:`CallPolicy`), verifying each
new envelope before the store replaces it, and recording progress in a :class:`Journal` so a
killed job resumes without redoing or skipping work.

Past one machine, ``migrate(url, engine, plan, executor=…)`` (or :func:`migrate_sharded`) runs
the job in shards on a ``dask.distributed.Client`` or any ``concurrent.futures.Executor``:
each shard (:func:`run_shard`, told a :class:`ShardJob` that holds no secret) opens its own
store and engine on its worker. dask is imported only when a Dask cluster is used.
"""

from ..rewrapping import RewrapPlan
from .distributed import migrate_sharded
from .fs_store import FileOps, FilesystemStore
from .guard import CallPolicy, GuardedEngine, JobCancelled, RateLimiter
from .journal import Journal, default_journal_path
from .runner import MigrationInterrupted, MigrationProgress, MigrationReport, migrate
from .shards import ShardJob, run_shard
from .sqlite_store import SqliteStore
from .store import EnvelopeStore, ItemSkipped, StoredItem, VersionedStore
from .store_urls import StoreURL, is_store_url, open_store, parse_store_url

__all__ = [
    "CallPolicy",
    "EnvelopeStore",
    "FileOps",
    "FilesystemStore",
    "GuardedEngine",
    "ItemSkipped",
    "JobCancelled",
    "Journal",
    "MigrationInterrupted",
    "MigrationProgress",
    "MigrationReport",
    "RateLimiter",
    "RewrapPlan",
    "ShardJob",
    "SqliteStore",
    "StoreURL",
    "StoredItem",
    "VersionedStore",
    "default_journal_path",
    "is_store_url",
    "migrate",
    "migrate_sharded",
    "open_store",
    "parse_store_url",
    "run_shard",
]
