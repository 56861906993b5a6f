"""Registers kmsenvelope's own envelope stores (``sqlite://``, and ``postgresql://`` alias
``postgres://``, whose psycopg comes with ``kmsenvelope[postgres]`` and is imported only when
such a store is opened) through the ``kmsenvelope`` entry-point group (name ``stores``), as any
third-party store plugin does. Stores that need a cloud SDK come with their distribution:
``s3://`` with kmsenvelope-aws (``kmsenvelope[s3]``)."""

from __future__ import annotations

from ..config import Config
from ..hooks import RegisterStore, hookimpl
from .postgres_store import open_postgres
from .sqlite_store import SqliteStore
from .store_urls import StoreURL

__all__ = ["kmsenvelope_register_stores", "open_sqlite"]

SQLITE_PARAMS = ("table", "key", "column")


def open_sqlite(url: StoreURL, config: Config) -> SqliteStore:
    """``sqlite:///PATH?table=T&key=ID_COLUMN&column=ENVELOPE_COLUMN`` (all three required;
    PATH relative to the working directory, ``sqlite:////abs/path`` for an absolute one)."""
    url.check_params(required=SQLITE_PARAMS)
    return SqliteStore(
        url.local_path(),
        url.params["table"],
        key_column=url.params["key"],
        value_column=url.params["column"],
    )


@hookimpl
def kmsenvelope_register_stores(register: RegisterStore) -> None:
    """Provide the ``sqlite`` and ``postgresql`` (alias ``postgres``) store URL schemes."""
    register("sqlite", open_sqlite)
    register("postgresql", open_postgres)
    register("postgres", open_postgres)
