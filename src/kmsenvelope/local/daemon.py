"""The local HSM as its own process: ``kmsenvelope hsm serve`` serves one unlocked keystore over a
Unix socket, so applications use its keys without ever holding them (see docs/local-hsm.md).

Who may connect is decided per connection from the kernel's peer credentials (``SO_PEERCRED``,
and ``SO_PEERGROUPS`` for supplementary groups), never from anything the peer says: a uid in
``allow_uids`` or a group in ``allow_gids``; with neither list, only the daemon's own uid. Key
administration additionally needs a uid in ``admin_uids``. A refused peer gets one error frame
and the connection is closed. Each connection has its own thread; requests on it are answered
in order (the protocol allows pipelining: a client may send many before reading). Every wrap
and unwrap is recorded in the keystore's audit log with the peer's uid and pid, and sent to the
configured audit sinks (:mod:`kmsenvelope.auditing`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..auditing.events import Operation
from ..auditing.trail import AuditTrail
from ..errors import AccessDeniedError, ConfigError, KmsEnvelopeError, ProviderUnavailableError
from .keystore import KEY_TYPES, Keystore
from .provider import parse_uri
from .wire import (
    ADMIN_OPS,
    MAX_REQUEST,
    Op,
    ProtocolError,
    Request,
    decode_request,
    encode_response,
    error_response,
    frame_length,
    info_document,
)

__all__ = ["HsmServer", "Peer", "PeerPolicy", "bind_socket", "inherited_socket", "peer_of"]

log = logging.getLogger("kmsenvelope.hsm")

_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
IDLE_TIMEOUT = 300.0
"""Seconds a connection may stay silent (or stall mid-frame) before the daemon closes it."""
FRAME_TIMEOUT = 10.0
"""Seconds the rest of a frame may take once its first bytes arrived (a peer that trickles
bytes cannot hold a connection for ever)."""
SEND_TIMEOUT = 30.0
"""Seconds an answer may wait for a peer that does not read its answers."""
MAX_CONNECTIONS = 256
MAX_CONNECTIONS_PER_UID = 128
"""One user cannot take every connection: others keep half of them."""
LISTEN_FDS_START = 3  # systemd socket activation (sd_listen_fds)


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a connection, as the kernel reports it."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]


def peer_of(conn: socket.socket) -> Peer:
    """The connected peer's credentials (``SO_PEERCRED``; groups from ``SO_PEERGROUPS``)."""
    pid, uid, gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    groups: tuple[int, ...] = (gid,)
    with contextlib.suppress(OSError):
        raw = conn.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 1024)
        count = len(raw) // 4
        groups = (gid, *struct.unpack(f"{count}I", raw[: count * 4]))
    return Peer(pid, uid, gid, groups)


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """Which peers may use the daemon, and which may administer keys through it."""

    allow_uids: frozenset[int]
    allow_gids: frozenset[int]
    admin_uids: frozenset[int]

    @classmethod
    def of(
        cls, allow_uids: Iterable[int], allow_gids: Iterable[int], admin_uids: Iterable[int]
    ) -> PeerPolicy:
        """The policy; with no uid and no gid allowed, the daemon's own uid alone is. An admin
        uid must be allowed to connect too (it is added to the allowed uids)."""
        uids, gids, admins = frozenset(allow_uids), frozenset(allow_gids), frozenset(admin_uids)
        if not uids and not gids:
            uids = frozenset({os.geteuid()})
        return cls(uids | admins, gids, admins)

    def refusal(self, peer: Peer) -> str | None:
        """Why ``peer`` may not connect (None: it may)."""
        if peer.uid in self.allow_uids or any(g in self.allow_gids for g in peer.groups):
            return None
        return f"uid {peer.uid} is not allowed to use this HSM daemon (see --allow-uid/--allow-gid)"

    def may_administer(self, peer: Peer) -> bool:
        """Whether ``peer`` may create, rotate, disable, enable, destroy or back up keys."""
        return peer.uid in self.admin_uids


def _check_directory(path: Path) -> None:
    """The socket's directory must not let others swap the socket (writable, not sticky)."""
    info = path.parent.stat()
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"{path.parent} is writable by other users: anyone could replace the socket; "
            "put it in a directory only the daemon's user can write (e.g. /run/kmsenvelope)"
        )


def bind_socket(path: Path, group: int | None = None) -> socket.socket:
    """A listening Unix socket at ``path``: mode 0600, or 0660 owned by ``group``.

    A stale socket left by a daemon that died is replaced; a live one, or anything that is not
    a socket, is refused (``ConfigError``). The mode is set at creation (by the umask), so
    there is no moment where others could connect.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"--socket: directory {path.parent} does not exist")
    _check_directory(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(info.st_mode):
            raise ConfigError(
                f"--socket: {path} exists and is not a socket (refusing to replace it)"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # nothing listens: a stale socket
        except OSError as exc:
            raise ConfigError(
                f"--socket: cannot tell whether {path} is in use ({exc.strerror}); remove it "
                "if no daemon serves it"
            ) from None
        else:
            raise ConfigError(f"--socket: another daemon is serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--socket: cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    if group is not None:
        try:
            os.chown(path, -1, group)
            os.chmod(path, 0o660)
        except OSError as exc:
            sock.close()
            path.unlink()
            raise ConfigError(
                f"--group: cannot give the socket to group {group} ({exc.strerror}): the "
                "daemon's user must be a member of that group"
            ) from None
    sock.listen(1024)
    return sock


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    try:
        sock = socket.socket(fileno=LISTEN_FDS_START)
    except OSError as exc:
        raise ConfigError(
            f"LISTEN_FDS is set but descriptor {LISTEN_FDS_START} is not a socket ({exc.strerror})"
        ) from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ConfigError("the socket systemd passed is not a Unix stream socket")
    return sock


def _read_exact(reader: BinaryIO, size: int) -> bytes | None:
    """``size`` bytes, or None at a clean end of stream before the first byte."""
    data = reader.read(size)
    if not data:
        return None
    while len(data) < size:
        more = reader.read(size - len(data))
        if not more:
            raise ProtocolError("connection closed inside a frame")
        data += more
    return data


class HsmServer:
    """Serves wrap, unwrap and (for admins) key administration of one unlocked keystore."""

    def __init__(
        self,
        keystore: Keystore,
        listener: socket.socket,
        policy: PeerPolicy,
        *,
        audit: AuditTrail | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._keystore = keystore
        self._listener = listener
        self._policy = policy
        self._audit = audit
        self._slots = threading.BoundedSemaphore(max_connections)
        self._per_uid_cap = max(1, min(MAX_CONNECTIONS_PER_UID, max_connections // 2))
        self._per_uid: dict[int, int] = {}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HsmServer({self._keystore!r})"

    def stop(self) -> None:
        """Stop accepting and close every connection (safe from a signal handler)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve_forever(self) -> None:
        """Accept connections until :meth:`stop`; then close them and flush the audit log."""
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        threads: list[threading.Thread] = []
        try:
            while not self._stop.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        break
                    try:
                        conn, _addr = self._listener.accept()
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE):
                            log.warning("cannot accept a connection: %s", exc.strerror)
                            self._stop.wait(0.1)  # out of descriptors: back off, do not spin
                        continue
                    thread = threading.Thread(
                        target=self._serve_connection, args=(conn,), daemon=True
                    )
                    thread.start()
                    threads = [t for t in threads if t.is_alive()] + [thread]
        finally:
            selector.close()
            with self._lock:
                for conn in self._connections:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
            for thread in threads:
                thread.join(timeout=5)
            self._wake_r.close()
            self._wake_w.close()

    # -- one connection ---------------------------------------------------------------------

    def _serve_connection(self, conn: socket.socket) -> None:
        with conn:
            try:
                peer = peer_of(conn)
            except OSError:
                return
            conn.settimeout(SEND_TIMEOUT)
            refusal = self._policy.refusal(peer)
            if refusal is not None:
                log.warning("refused pid %d uid %d: %s", peer.pid, peer.uid, refusal)
                with contextlib.suppress(OSError):
                    conn.sendall(error_response(0, AccessDeniedError(refusal)))
                return
            if not self._take_slot(peer.uid):
                busy = "too many connections to this HSM daemon; try again later"
                log.warning("busy: refused pid %d uid %d", peer.pid, peer.uid)
                with contextlib.suppress(OSError):
                    conn.sendall(error_response(0, ProviderUnavailableError(busy)))
                return
            with self._lock:
                self._connections.add(conn)
            try:
                self._requests(conn, peer)
            finally:
                with self._lock:
                    self._connections.discard(conn)
                    self._per_uid[peer.uid] -= 1
                self._slots.release()

    def _take_slot(self, uid: int) -> bool:
        """A connection slot for ``uid``, within the total and the per-user caps."""
        with self._lock:
            if self._per_uid.get(uid, 0) >= self._per_uid_cap:
                return False
            if not self._slots.acquire(blocking=False):
                return False
            self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
            return True

    def _requests(self, conn: socket.socket, peer: Peer) -> None:
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                try:
                    conn.settimeout(IDLE_TIMEOUT)
                    prefix = _read_exact(reader, 4)
                    if prefix is None:
                        return
                    conn.settimeout(FRAME_TIMEOUT)  # the rest of the frame, and its answer
                    body = _read_exact(reader, frame_length(prefix, MAX_REQUEST))
                    if body is None:
                        raise ProtocolError("connection closed inside a frame")
                    request = decode_request(body)
                except ProtocolError as exc:
                    log.warning("pid %d uid %d broke the protocol: %s", peer.pid, peer.uid, exc)
                    with contextlib.suppress(OSError):
                        conn.sendall(error_response(0, exc))
                    return
                except (OSError, ValueError):  # timeout, reset, closed by stop()
                    return
                try:
                    reply = encode_response(request, self._handle(request, peer))
                except KmsEnvelopeError as exc:
                    reply = error_response(request.request_id, exc)
                except Exception as exc:  # a bug must not take the daemon down
                    log.error("internal error on %s: %s", request.op.name, type(exc).__name__)
                    reply = error_response(
                        request.request_id, KmsEnvelopeError("internal error in the HSM daemon")
                    )
                try:
                    conn.sendall(reply)
                except OSError:
                    return
        finally:
            reader.close()

    def _handle(self, request: Request, peer: Peer) -> Any:
        op, args = request.op, request.args
        if op in ADMIN_OPS and not self._policy.may_administer(peer):
            raise AccessDeniedError(
                f"uid {peer.uid} may not administer keys through this HSM daemon (see --admin-uid)"
            )
        store = self._keystore
        if op in (Op.WRAP, Op.UNWRAP):
            return self._crypto(request, peer)
        if op == Op.INFO:
            return info_document(store.get(args[0]))
        if op == Op.LIST:
            return [info_document(k) for k in store.list_keys()]
        subject = "" if op == Op.BACKUP else args[0]  # a backup's argument is its passphrase
        log.info("pid %d uid %d: %s %r", peer.pid, peer.uid, op.name.lower(), subject)
        if op == Op.CREATE:
            if args[1] not in KEY_TYPES:
                raise ConfigError(f"key type must be one of {', '.join(KEY_TYPES)}")
            return info_document(store.create_key(args[0], args[1]))
        if op == Op.ROTATE:
            return info_document(store.rotate(args[0]))
        if op in (Op.ENABLE, Op.DISABLE):
            return info_document(store.set_enabled(args[0], op == Op.ENABLE))
        if op == Op.DESTROY:
            return info_document(store.destroy_version(args[0], args[1]))
        return store.backup_bytes(args[0], peer=(peer.uid, peer.pid))

    def _crypto(self, request: Request, peer: Peer) -> Any:
        uri, payload, context = request.args
        name, version = parse_uri(uri)
        who = (peer.uid, peer.pid)
        wrapping = request.op == Op.WRAP
        operation: Operation = "wrap" if wrapping else "unwrap"
        key_id = uri if wrapping else payload.key_id
        call = (
            contextlib.nullcontext()
            if self._audit is None
            else self._audit.call(operation, key_id, "local", context, peer=who)
        )
        with call:  # one event to the configured sinks, ok or error, with the peer
            if wrapping:
                return self._keystore.wrap(name, version, payload, context, peer=who)
            return self._keystore.unwrap(name, payload, context, peer=who)
