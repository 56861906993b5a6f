"""A throwaway PostgreSQL cluster: ``initdb`` and ``pg_ctl`` (Debian's ``postgresql`` package) in
a new temporary directory, on a free loopback port, with password (SCRAM) authentication for a
test user; stopped (``-m immediate``) and removed on exit.

A plain context manager without pytest, so benchmarks use it too::

    with PostgresCluster() as pg:
        url = pg.url({"table": "secrets", "key": "id", "column": "token"})

Run as root (CI), the server runs as the ``postgres`` user (``initdb`` refuses root): its
directory is made with :func:`tempfile.mkdtemp` (never under pytest's private 0700 directories)
and handed over to that user. :class:`PostgresNotFound` when no binaries are installed.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["PostgresCluster", "PostgresNotFound", "find_binaries"]

SERVER_USER = "postgres"
"""The account the server runs as when the tests run as root."""
START_ATTEMPTS = 4
"""Free ports tried (another process may take the one picked before the server binds it)."""


class PostgresNotFound(RuntimeError):
    """No ``initdb``/``pg_ctl`` on PATH or in /usr/lib/postgresql/*/bin."""


def find_binaries() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``createdb`` (the newest Debian version
    first, then PATH)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(os.path.realpath(on_path)).parent))
    for directory in candidates:
        if all(os.access(Path(directory, n), os.X_OK) for n in ("initdb", "pg_ctl", "createdb")):
            return Path(directory)
    raise PostgresNotFound(
        "PostgreSQL server binaries not found (initdb, pg_ctl): apt-get install postgresql"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A PostgreSQL server of its own: ``user`` (superuser, password ``password``) owns the
    database ``database``; reachable on ``127.0.0.1:port`` and through the socket directory."""

    def __init__(self, *, user: str = "kmsenvelope", database: str = "envelopes") -> None:
        self.user = user
        self.database = database
        # Characters a URL must percent-encode, so the store's decoding is exercised.
        self.password = f"p@ss:w/rd%{secrets.token_hex(8)}?#&="
        self.host = "127.0.0.1"
        self.port = 0
        self.directory: Path | None = None
        self._bin: Path | None = None
        self._owner: pwd.struct_passwd | None = None

    # -- what a test uses ----------------------------------------------------------------------

    def url(
        self, params: Mapping[str, str], *, password: bool = True, scheme: str = "postgresql"
    ) -> str:
        """``postgresql://USER[:PASSWORD]@127.0.0.1:PORT/DATABASE?PARAMS`` (percent-encoded)."""
        secret = f":{quote(self.password, safe='')}" if password else ""
        query = f"?{urlencode(params)}" if params else ""
        return f"{scheme}://{self.user}{secret}@{self.host}:{self.port}/{self.database}{query}"

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` as the test user."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.database,
        }

    @property
    def log(self) -> str:
        """The server's log so far (for a failure message)."""
        if self.directory is None:
            return ""
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> PostgresCluster:
        self._bin = find_binaries()
        self._owner = pwd.getpwnam(SERVER_USER) if os.geteuid() == 0 else None
        self.directory = Path(tempfile.mkdtemp(prefix="kmsenvelope-pg-"))
        try:
            self._init()
            self._start()
            self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", self.user,
                      self.database)  # fmt: skip
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.directory is None:
            return
        if (self.directory / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.directory / "data"), "-m", "immediate",
                      "-w", "-s", check=False)  # fmt: skip
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def _env(self) -> Mapping[str, str]:
        """The environment of the server's tools: none of the developer's PG* settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", PGPASSWORD=self.password)
        if self._owner is not None:
            env["HOME"] = self._owner.pw_dir
        return env

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """One of the server's tools, as the server's user (dropped from root when root)."""
        assert self._bin is not None
        assert self.directory is not None
        owner = self._owner
        proc = subprocess.run(
            [str(self._bin / tool), *args],
            cwd=self.directory,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({proc.returncode}): {proc.stderr.strip()}\n{self.log[-2000:]}"
            )
        return proc

    def _init(self) -> None:
        assert self.directory is not None
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password + "\n")
        (self.directory / "socket").mkdir()
        if self._owner is not None:
            for path in (self.directory, pwfile, self.directory / "socket"):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        self._run("initdb", "-D", str(self.directory / "data"), "-U", self.user,
                  f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale",
                  "--no-sync", "--no-instructions")  # fmt: skip
        pwfile.unlink()

    def _start(self) -> None:
        assert self.directory is not None
        data = self.directory / "data"
        conf = data / "postgresql.conf"
        base = conf.read_text()
        for _attempt in range(START_ATTEMPTS):
            self.port = _free_port()
            conf.write_text(
                base
                + "\n# kmsenvelope tests: loopback only, a private socket, durability off\n"
                + f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                + f"unix_socket_directories = '{self.directory / 'socket'}'\n"
                + "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                + "max_connections = 60\nshared_buffers = 32MB\n"
            )
            proc = self._run("pg_ctl", "start", "-D", str(data), "-l",
                             str(self.directory / "server.log"), "-w", "-t", "60", "-s",
                             check=False)  # fmt: skip
            if proc.returncode == 0:
                return
            if "could not bind" not in self.log and "in use" not in self.log:
                break
            time.sleep(0.2)
        raise RuntimeError(f"pg_ctl start failed: {proc.stderr.strip()}\n{self.log[-2000:]}")
