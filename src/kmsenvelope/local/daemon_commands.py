"""``kmsenvelope hsm serve``: run the local HSM as its own process (:mod:`.daemon`).

The passphrase comes from ``KMSENVELOPE_KEYSTORE_PASSPHRASE`` (removed from the daemon's
environment once read), a file descriptor (``--passphrase-fd N``: read to its end or first
newline) or a prompt -- never a command-line argument, which any local user could read in
``ps``. The daemon runs in the foreground and logs to stderr; SIGTERM (or Ctrl-C) stops it
cleanly with exit status 0, after flushing the audit log.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import logging
import os
import pwd
import socket
import sys
from pathlib import Path

from ..auditing.trail import AuditTrail
from ..errors import ConfigError, KeystoreError
from ..hooks import CommandContext, RegisterCommand
from .daemon import HsmServer, PeerPolicy, bind_socket, inherited_socket
from .keystore import Keystore
from .provider import audit_sync, keystore_dir, passphrase_from_env
from .unlock import PASSPHRASE_ENV

__all__ = ["register_daemon_commands"]

MAX_PASSPHRASE_BYTES = 4096
log = logging.getLogger("kmsenvelope.hsm")


def _ids(values: list[str], kind: str) -> set[int]:
    """Numeric ids or names (``--allow-uid alice,1001``); an unknown name is a usage error."""
    out: set[int] = set()
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if item.isdigit():
                out.add(int(item))
                continue
            try:
                out.add(pwd.getpwnam(item).pw_uid if kind == "user" else grp.getgrnam(item).gr_gid)
            except KeyError:
                raise ConfigError(f"no such {kind}: {item!r}") from None
    return out


def _passphrase_from_fd(fd: int) -> str:
    """The passphrase read from descriptor ``fd`` (up to the first newline; fd closed)."""
    raw = b""
    try:
        while len(raw) <= MAX_PASSPHRASE_BYTES and not raw.endswith(b"\n"):
            byte = os.read(fd, 1)  # one at a time: stop at the newline, even on an open pipe
            if not byte:
                break
            raw += byte
    except OSError as exc:
        raise ConfigError(f"--passphrase-fd {fd}: cannot read: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if len(raw) > MAX_PASSPHRASE_BYTES:
        raise KeystoreError(f"--passphrase-fd {fd}: longer than {MAX_PASSPHRASE_BYTES} bytes")
    text = raw.split(b"\n", 1)[0].removesuffix(b"\r")
    try:
        passphrase = text.decode("utf-8")
    except UnicodeDecodeError:
        raise KeystoreError(f"--passphrase-fd {fd}: the passphrase is not UTF-8") from None
    if not passphrase:
        raise KeystoreError(f"--passphrase-fd {fd}: empty passphrase")
    return passphrase


def _passphrase(args: argparse.Namespace) -> str:
    if args.passphrase_fd is not None:
        passphrase = _passphrase_from_fd(args.passphrase_fd)
    else:
        passphrase = passphrase_from_env()
    os.environ.pop(PASSPHRASE_ENV, None)  # not inherited by anything the daemon starts
    return passphrase


def _notify_ready() -> None:
    """Tell systemd (``Type=notify``) the daemon is ready, when it asked to be told."""
    target = os.environ.pop("NOTIFY_SOCKET", None)
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        sock.sendto(b"READY=1", address)


def _logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kmsenvelope hsm: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _serve(ctx: CommandContext, args: argparse.Namespace) -> int:
    listener = inherited_socket()
    if listener is None and args.socket is None:
        raise ConfigError("hsm serve needs --socket PATH (or a socket passed by systemd)")
    group = None
    if args.group is not None:
        groups = _ids([args.group], "group")
        if len(groups) != 1:
            raise ConfigError("--group names exactly one group")
        group = groups.pop()
    policy = PeerPolicy.of(
        _ids(args.allow_uid, "user"), _ids(args.allow_gid, "group"), _ids(args.admin_uid, "user")
    )
    if group is not None and not policy.allow_gids and args.allow_uid == []:
        policy = PeerPolicy(policy.allow_uids, frozenset({group}), policy.admin_uids)
    settings = ctx.config.provider_settings("local")
    directory = keystore_dir(settings)
    keystore = Keystore.open(directory, _passphrase(args), audit_sync=audit_sync(settings))
    created: Path | None = None
    bound = -1
    try:
        if listener is None:
            path = Path(args.socket).absolute()
            listener = bind_socket(path, group)
            created = path  # ours to remove at the end (never what a refused start found)
            bound = path.lstat().st_ino
        server = HsmServer(keystore, listener, policy, audit=AuditTrail.from_config(ctx.config))
        _logging()
        where = created if created is not None else "the socket systemd passed"
        log.info(
            "serving the keystore %s on %s (uids %s%s; admin uids %s)",
            directory,
            where,
            ",".join(map(str, sorted(policy.allow_uids))) or "-",
            f", gids {','.join(map(str, sorted(policy.allow_gids)))}" if policy.allow_gids else "",
            ",".join(map(str, sorted(policy.admin_uids))) or "none",
        )
        _notify_ready()
        with contextlib.suppress(KeyboardInterrupt):  # SIGTERM, SIGHUP, Ctrl-C: a clean stop
            server.serve_forever()
        log.info("stopped")
        return 0
    finally:
        try:
            keystore.close()
        finally:
            if listener is not None:
                listener.close()
            if created is not None:
                with contextlib.suppress(OSError):
                    if created.lstat().st_ino == bound:  # still ours, not a later daemon's
                        created.unlink()


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH", help="Unix socket to listen on (created 0600)")
    p.add_argument(
        "--group",
        metavar="GROUP",
        help="make the socket 0660 and owned by GROUP (its members may connect unless "
        "--allow-uid/--allow-gid say otherwise)",
    )
    p.add_argument(
        "--allow-uid",
        action="append",
        default=[],
        metavar="UID",
        help="a user (uid or name) that may connect; repeat or separate with commas "
        "(default: the daemon's own user only)",
    )
    p.add_argument(
        "--allow-gid",
        action="append",
        default=[],
        metavar="GID",
        help="a group (gid or name) whose members may connect",
    )
    p.add_argument(
        "--admin-uid",
        action="append",
        default=[],
        metavar="UID",
        help="a user that may also create, rotate, disable, enable, destroy and back up keys "
        "through the daemon (default: nobody)",
    )
    p.add_argument(
        "--passphrase-fd",
        type=int,
        metavar="N",
        help="read the keystore passphrase from file descriptor N (instead of "
        "KMSENVELOPE_KEYSTORE_PASSPHRASE or a prompt)",
    )


def register_daemon_commands(register: RegisterCommand) -> None:
    """Register ``hsm`` and ``hsm serve``."""
    register("hsm", None, help="run the local HSM as its own process")
    register(
        "hsm serve",
        _serve,
        help="serve the local keystore's keys over a Unix socket (foreground; SIGTERM stops)",
        description="Unlock the local keystore once and serve wrap and unwrap over a Unix "
        "socket, so applications use its keys without holding them (point them at it with "
        "[providers.local] socket or KMSENVELOPE_HSM_SOCKET). Connections are checked by "
        "their kernel credentials against --allow-uid/--allow-gid; key administration needs "
        "--admin-uid. See docs/local-hsm.md.",
        arguments=_serve_arguments,
    )
