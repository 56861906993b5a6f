"""The ``local`` provider's client side of the HSM daemon (``[providers.local] socket`` or
``KMSENVELOPE_HSM_SOCKET``): keys are used through the socket, never read.

One connection per socket path per process, shared by every thread: requests carry ids, so
threads pipeline on it (whichever thread is waiting reads the next responses and hands the
others theirs). A daemon that is not running, stops, or stalls is a ``ProviderUnavailableError``;
the next call connects again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import (
    AccessDeniedError,
    ConfigError,
    KeyNotFoundError,
    KeystoreError,
    KmsEnvelopeError,
    ProviderUnavailableError,
)
from ..kek import WrappedKey
from ..safe_files import atomic_write, replaceable_target
from .files import KEYSTORE_FILES
from .keystore import KeyInfo, KeyType, VersionInfo
from .wire import (
    ERROR_CLASSES,
    MAX_RESPONSE,
    Op,
    ProtocolError,
    decode_response,
    encode_request,
    frame_length,
    key_info,
    response_id,
)

__all__ = ["HSM_SOCKET_ENV", "HsmClient", "RemoteKeystore", "RemoteLocalKEK", "client_for"]

HSM_SOCKET_ENV = "KMSENVELOPE_HSM_SOCKET"
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_LIVE: weakref.WeakSet[HsmClient] = weakref.WeakSet()
REPLY_TIMEOUT = 60.0
"""Seconds to wait for the daemon's answer before calling it unavailable."""
IDLE_RECONNECT = 240.0
"""A connection idle this long is replaced before use (the daemon closes idle ones at 300 s)."""


class HsmClient:
    """A thread-safe, pipelining connection to one HSM daemon socket."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = REPLY_TIMEOUT,
        daemon_uid: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_absolute():
            raise ConfigError(
                f"the HSM daemon's socket must be an absolute path, not {str(path)!r} (a "
                "relative one would depend on the working directory)"
            )
        self._timeout = timeout
        self._daemon_uid = daemon_uid
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: BinaryIO | None = None
        self._pid = 0
        self._last_used = 0.0
        self._next_id = 0
        self._waiting: dict[int, Op] = {}
        self._answers: dict[int, bytes] = {}
        self._reading = False
        self._failure: dict[int, BaseException] = {}
        _LIVE.add(self)

    def _after_fork(self) -> None:
        """In a forked child: fresh locks and no connection (a parent's thread may have held
        a lock at the fork, and the parent's connection is never shared)."""
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._sock, self._reader = None, None
        self._waiting.clear()
        self._answers.clear()
        self._failure.clear()
        self._reading = False

    def __repr__(self) -> str:
        return f"HsmClient({str(self.path)!r})"

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        with self._cond:
            self._drop(ProviderUnavailableError(f"connection to {self.path} closed"))

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise ProviderUnavailableError(
                f"the local HSM daemon is not running at {self.path} ({exc.strerror}); start "
                "it with 'kmsenvelope hsm serve --socket PATH'"
            ) from None
        except PermissionError:
            sock.close()
            raise AccessDeniedError(
                f"may not connect to the local HSM daemon at {self.path} (permission denied: "
                "the daemon's --group and --allow-uid/--allow-gid decide who may)"
            ) from None
        except OSError as exc:
            sock.close()
            raise ProviderUnavailableError(
                f"cannot connect to the local HSM daemon at {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            self._check_daemon(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _check_daemon(self, sock: socket.socket) -> None:
        """Refuse to talk to a process that is not the daemon: before any data key is sent,
        the kernel's credentials of the listening process must show a uid we trust -- root,
        our own, the owner of the socket's directory (who alone decides what is bound there),
        or ``daemon_uid``. Anyone who binds the path while the daemon is down fails this."""
        (_pid, uid, _gid) = _CRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
        )
        trusted = {0, os.geteuid()}
        if self._daemon_uid is not None:
            trusted.add(self._daemon_uid)
        else:
            with contextlib.suppress(OSError):
                trusted.add(self.path.parent.stat().st_uid)
        if uid not in trusted:
            raise AccessDeniedError(
                f"the process listening at {self.path} runs as uid {uid}, not as the HSM "
                f"daemon's user: refusing to send it data keys (if it is the daemon, set "
                "[providers.local] daemon_uid to its uid)"
            )

    def _connection(self) -> socket.socket:
        """The open connection (called with the condition held); a forked child reconnects."""
        if self._sock is not None and self._pid != os.getpid():
            self._sock, self._reader = None, None  # the parent's: never share it
            self._waiting.clear()
            self._answers.clear()
            self._reading = False
        now = time.monotonic()
        if self._sock is not None and not self._waiting and now - self._last_used > IDLE_RECONNECT:
            self._drop(self._gone("was idle"))  # the daemon may have closed it already
        self._last_used = now
        if self._sock is None:
            self._sock = self._connect()
            self._reader = self._sock.makefile("rb")
            self._pid = os.getpid()
        return self._sock

    def _drop(self, error: BaseException) -> None:
        """Fail every request in flight with ``error`` and forget the connection."""
        for request_id in self._waiting:
            self._failure[request_id] = error
        self._waiting.clear()
        self._answers.clear()
        if self._sock is not None:
            if self._reader is not None:
                self._reader.close()
            self._sock.close()
        self._sock, self._reader = None, None
        self._cond.notify_all()

    # -- requests ---------------------------------------------------------------------------

    def call(self, op: Op, *args: Any) -> Any:
        """Send one request and return its result (raising the daemon's error class)."""
        with self._cond:
            sock = self._connection()
            request_id = self._new_id()
            data = encode_request(op, request_id, *args)  # too large: fails here, unsent
            self._waiting[request_id] = op  # on this connection, in the same critical section
        try:
            with self._send_lock:
                sock.sendall(data)
        except BaseException as exc:
            # an error (or Ctrl-C) mid-send may leave half a frame: the connection is done
            with self._cond:
                if self._sock is sock:
                    reason = self._last_word() if isinstance(exc, OSError) else None
                    self._drop(reason or self._gone("closed the connection"))
                self._waiting.pop(request_id, None)
                if not isinstance(exc, OSError):
                    self._failure.pop(request_id, None)
                    raise
        body = self._await(request_id)
        response = decode_response(body, op)
        response.raise_error()
        return response.value

    def _new_id(self) -> int:
        """A request id not in flight (ids wrap after 2**32 - 1; 0 is the daemon's)."""
        while True:
            self._next_id = self._next_id % 0xFFFFFFFF + 1
            if self._next_id not in self._waiting and self._next_id not in self._failure:
                return self._next_id

    def _gone(self, what: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"the local HSM daemon at {self.path} {what} (stopped or restarted?)"
        )

    def _await(self, request_id: int) -> bytes:
        while True:
            with self._cond:
                while True:
                    if request_id in self._answers:
                        self._waiting.pop(request_id, None)
                        return self._answers.pop(request_id)
                    failure = self._failure.pop(request_id, None)
                    if failure is not None:
                        raise failure
                    if not self._reading:
                        break
                    self._cond.wait()
                self._reading = True
                reader = self._reader
            try:
                if reader is None:
                    raise self._gone("closed the connection")
                body = self._read_frame(reader)
            except BaseException as exc:
                # Others waiting on this connection get a provider error, never this thread's
                # interruption; this thread raises its own.
                shared = exc if isinstance(exc, KmsEnvelopeError) else self._gone("was reset")
                with self._cond:
                    self._reading = False
                    if self._reader is reader:
                        self._drop(shared)
                    self._waiting.pop(request_id, None)
                    self._failure.pop(request_id, None)
                    self._cond.notify_all()
                raise exc from None
            with self._cond:
                self._reading = False
                answered = response_id(body)
                if answered == 0:  # the daemon refused us or the protocol: the connection ends
                    error = decode_response(body, Op.LIST)
                    self._drop(self._refusal(error.error))
                elif answered in self._waiting:
                    self._answers[answered] = body
                self._cond.notify_all()

    def _last_word(self) -> BaseException | None:
        """The refusal a daemon sent before closing (it refuses a peer as soon as it connects,
        so a write can fail before the refusal is read); None if there is none to read."""
        if self._reading or self._reader is None:
            return None
        try:
            body = self._read_frame(self._reader)
            if response_id(body) == 0:
                return self._refusal(decode_response(body, Op.LIST).error)
        except (KmsEnvelopeError, OSError, ValueError):
            pass
        return None

    @staticmethod
    def _refusal(error: tuple[str, str] | None) -> BaseException:
        """The error a daemon sent before closing the connection (a refusal, "busy", or a
        protocol violation), as its allow-listed class."""
        if error is None:
            return ProtocolError("the HSM daemon closed the connection")
        return ERROR_CLASSES.get(error[0], ProtocolError)(error[1])

    def _read_frame(self, reader: BinaryIO) -> bytes:
        try:
            prefix = reader.read(4)
            if len(prefix) < 4:
                raise self._gone("closed the connection")
            size = frame_length(prefix, MAX_RESPONSE)
            body = reader.read(size)
        except TimeoutError:
            raise ProviderUnavailableError(
                f"the local HSM daemon at {self.path} did not answer within {self._timeout:g} s"
            ) from None
        except OSError as exc:
            raise self._gone(f"failed ({exc.strerror or exc})") from None
        if len(body) < size:
            raise self._gone("closed the connection")
        return body


_CLIENTS: dict[tuple[str, int | None], HsmClient] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(path: str | os.PathLike[str], daemon_uid: int | None = None) -> HsmClient:
    """The process's shared client for the daemon at ``path``."""
    key = (os.fspath(path), daemon_uid)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = HsmClient(key[0], daemon_uid=daemon_uid)
        return client


def _reset_after_fork() -> None:
    global _CLIENTS_LOCK
    _CLIENTS_LOCK = threading.Lock()
    for client in list(_LIVE):
        client._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


class RemoteLocalKEK:
    """A ``local:NAME[/VERSION]`` key used through the HSM daemon; holds no key material."""

    def __init__(self, uri: str, name: str, version: int | None, client: HsmClient) -> None:
        self._uri = uri
        self._name = name
        self._version = version
        self._client = client

    @property
    def key_id(self) -> str:
        return self._uri

    def __repr__(self) -> str:
        return f"RemoteLocalKEK({self._uri!r}, socket={str(self._client.path)!r})"

    def latest(self) -> RemoteLocalKEK:
        """This key at its current version, as the daemon reports it."""
        current = key_info(self._client.call(Op.INFO, self._name)).current
        if self._version == current:
            return self
        return RemoteLocalKEK(f"local:{self._name}/{current}", self._name, current, self._client)

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        wrapped: WrappedKey = self._client.call(Op.WRAP, self._uri, bytes(dek), dict(context))
        if wrapped.provider != "local" or not wrapped.key_id.startswith(f"local:{self._name}/"):
            raise ProtocolError(f"the HSM daemon answered a wrap with key {wrapped.key_id!r}")
        return wrapped

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        dek: bytes = self._client.call(Op.UNWRAP, self._uri, wrapped, dict(context))
        return dek


class RemoteKeystore:
    """Key administration through the daemon (the peer's uid must be an ``--admin-uid``); the
    same methods the ``keys`` commands use on a :class:`Keystore`."""

    def __init__(self, client: HsmClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"RemoteKeystore({str(self._client.path)!r})"

    def _info(self, op: Op, *args: Any) -> KeyInfo:
        info: KeyInfo = key_info(self._client.call(op, *args))
        return info

    def create_key(self, name: str, key_type: KeyType = "aes256") -> KeyInfo:
        return self._info(Op.CREATE, name, key_type)

    def list_keys(self) -> list[KeyInfo]:
        docs = self._client.call(Op.LIST)
        if not isinstance(docs, list):
            raise ProtocolError("the daemon sent a key list this client cannot read")
        return [key_info(doc) for doc in docs]

    def get(self, name: str) -> KeyInfo:
        return self._info(Op.INFO, name)

    def rotate(self, name: str) -> KeyInfo:
        return self._info(Op.ROTATE, name)

    def set_enabled(self, name: str, enabled: bool) -> KeyInfo:
        return self._info(Op.ENABLE if enabled else Op.DISABLE, name)

    def destroy_check(self, name: str, version: int) -> VersionInfo:
        """As :meth:`Keystore.destroy_check`, from the daemon's key information."""
        info = self.get(name)
        found = next((v for v in info.versions if v.version == version), None)
        if found is None:
            raise KeyNotFoundError(f"local:{name}/{version}: no such key version")
        if found.state != "destroyed" and info.current == version:
            raise KeystoreError(
                f"local:{name}/{version} is the current version; rotate the key before "
                "destroying it"
            )
        return found

    def destroy_version(self, name: str, version: int) -> KeyInfo:
        return self._info(Op.DESTROY, name, version)

    def backup(self, target: str | os.PathLike[str], passphrase: str) -> int:
        """Have the daemon encrypt a backup under ``passphrase``; write it to ``target`` (0600)."""
        if not passphrase:
            raise KeystoreError("refusing to write a backup with an empty passphrase")
        path = replaceable_target(Path(target).expanduser(), "backup")
        data: bytes = self._client.call(Op.BACKUP, passphrase)
        atomic_write(path, data, refuse=KEYSTORE_FILES)
        return len(self.list_keys())
