"""PKCS#11 modules and pooled, logged-in sessions, behind one process-wide lock.

* :data:`LOCK` -- every call into a PKCS#11 library holds it. python-pkcs11 initialises modules
  with ``C_Initialize(NULL)``, which lets a module assume it is never entered from two threads
  at once (SoftHSM2 crashes if it is), so all calls are serialized, in every thread.
* A module is loaded once per process (python-pkcs11 caches it by path).
* A :class:`TokenPool` per (module, token) logs in **once** -- PKCS#11 logins belong to the
  application, not the session, so every later session of the pool shares it -- and reuses up
  to ``max_sessions`` read-only sessions. A session a thread has checked out is used by that
  thread only, so a multi-call operation (create, wrap, destroy) never interleaves with another
  thread's on the same session.
* The PIN is not kept: the pool holds a keyed digest of it, so a later request for the same
  token with a different PIN is refused instead of riding on the existing login.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kmsenvelope.errors import (
    AccessDeniedError,
    ConfigError,
    KeyNotFoundError,
    ProviderUnavailableError,
)

from . import _p11
from .errors import translate

__all__ = [
    "LOCK",
    "PoolClosedError",
    "TokenPool",
    "TokenRef",
    "close_all",
    "drop_pool",
    "get_pool",
    "load_module",
    "resolve_token",
    "serialized",
]

LOCK = threading.RLock()
_log = logging.getLogger("kmsenvelope.pkcs11")
_PIN_KEY = os.urandom(32)  # per-process key for PIN digests; the PIN itself is not stored

_modules: dict[str, Any] = {}
_pools: dict[tuple[str, str, str], TokenPool] = {}
_inherited: set[str] = set()  # modules a forked child must re-initialize before use


def _after_fork_in_child() -> None:
    """A forked child starts afresh: PKCS#11 state belongs to the parent.

    The lock may have been held by another thread of the parent at fork time, and the parent's
    sessions and logins are not the child's to use or close (PKCS#11 v2.40 §6.7.2: a child
    must call C_Initialize before using the library).
    """
    global LOCK
    LOCK = threading.RLock()
    _pools.clear()
    _inherited.update(_modules)
    _modules.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def serialized() -> Iterator[None]:
    """Hold :data:`LOCK` for a block of PKCS#11 calls, error paths included.

    When python-pkcs11 raises, half-finished operations (a find, an encrypt) still sit in the
    traceback's frames and call ``C_*Final`` from their finalizers when freed -- which would be
    after the lock is released. Clearing the frames here runs those finalizers under the lock.
    """
    with LOCK:
        try:
            yield
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise


class PoolClosedError(ProviderUnavailableError):
    """The pool was closed (its login was lost) while a thread waited for a session."""


def _pin_digest(pin: str) -> bytes:
    return hmac.new(_PIN_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class TokenRef:
    """A token resolved in a module: its label, and its serial if the URI named one."""

    module: str
    label: str
    serial: str | None = None

    def __str__(self) -> str:
        serial = f" (serial {self.serial})" if self.serial else ""
        return f"token {self.label!r}{serial}"


def load_module(path: str, source: str) -> Any:
    """Load and initialise the PKCS#11 module at ``path`` (once per process)."""
    with serialized():
        lib = _modules.get(path)
        if lib is not None:
            return lib
        if not os.path.exists(path):
            raise ConfigError(
                f"PKCS#11 module {path!r} (from {source}) does not exist; install it or point "
                "'module' at the right file"
            )
        try:
            lib = _p11.load_library(path)
            if path in _inherited:
                lib.reinitialize()  # C_Finalize + C_Initialize, in this (forked) process
                _inherited.discard(path)
        except Exception as exc:
            raise ProviderUnavailableError(
                f"cannot load PKCS#11 module {path!r} (from {source}): "
                f"{str(exc) or type(exc).__name__}"
            ) from None
        _log.debug("loaded PKCS#11 module %s", path)
        _modules[path] = lib
        return lib


def _label(token: Any) -> str:
    return str(token.label).strip()


def _serial(token: Any) -> str:
    raw = token.serial
    return (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip()


def resolve_token(
    lib: Any, module: str, label: str | None, serial: str | None, hint: str
) -> TokenRef:
    """Find the one token matching ``label``/``serial``; with neither, the only token there is.

    ``hint`` says how to name a token (e.g. ``token= in the URI or 'token' in [providers.…]``).
    """
    with serialized():
        try:
            tokens = list(lib.get_tokens())
        except Exception as exc:
            raise translate(exc, doing="list tokens", where=f"PKCS#11 module {module}") from None
        initialized = [t for t in tokens if t.flags & _p11.TokenFlag.TOKEN_INITIALIZED]
        matches = [
            t
            for t in initialized
            if (label is None or _label(t) == label) and (serial is None or _serial(t) == serial)
        ]
        names = ", ".join(sorted(repr(_label(t)) for t in initialized)) or "none"
    if label is None and serial is None and len(matches) > 1:
        raise ConfigError(
            f"PKCS#11 module {module} has several tokens ({names}); name one with {hint}"
        )
    if not matches:
        wanted = (
            " ".join(
                part
                for part in (
                    f"labelled {label!r}" if label is not None else "",
                    f"with serial {serial!r}" if serial is not None else "",
                )
                if part
            )
            or "at all"
        )
        raise KeyNotFoundError(
            f"no initialized token {wanted} in PKCS#11 module {module} (tokens: {names})"
        )
    if len(matches) > 1:
        raise ConfigError(
            f"several tokens in PKCS#11 module {module} are labelled {label!r}; "
            "add serial=… to the key URI"
        )
    return TokenRef(module, _label(matches[0]), serial)


class TokenPool:
    """Sessions on one token, sharing one login."""

    def __init__(self, ref: TokenRef, token: Any, pin: str, max_sessions: int) -> None:
        self.ref = ref
        self._token = token
        self._pin_digest = _pin_digest(pin)
        self._max = max_sessions
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[Any] = []
        self._open = 0
        self._closed = False
        with serialized():
            try:
                first = token.open(user_pin=pin)
            except _p11.exc.UserAlreadyLoggedIn:
                # Something else in this process logged in to the token; the login is shared.
                first = token.open()
        _log.debug("logged in to %s in PKCS#11 module %s", ref, ref.module)
        self._idle.append(first)
        self._open = 1

    def pin_matches(self, pin: str) -> bool:
        return hmac.compare_digest(self._pin_digest, _pin_digest(pin))

    def _checkout(self) -> Any:
        with self._cond:
            while True:
                if self._closed:
                    raise PoolClosedError(f"{self.ref}: session pool was closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self._max:
                    self._open += 1
                    break
                self._cond.wait()
        try:
            with serialized():
                session = self._token.open()  # shares the pool's login
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise
        _log.debug("opened session %d on %s", self._open, self.ref)
        return session

    def _checkin(self, session: Any) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(session)
                self._cond.notify()
                return
            self._open -= 1
        _close_quietly(session)

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Check out a session for the calling thread; its PKCS#11 calls still need LOCK."""
        session = self._checkout()
        try:
            yield session
        finally:
            self._checkin(session)

    @contextmanager
    def read_write_session(self) -> Iterator[Any]:
        """A new read/write session sharing the login (for creating keys), closed after."""
        with serialized():
            session = self._token.open(rw=True)
        try:
            yield session
        finally:
            _close_quietly(session)

    def close(self) -> None:
        """Close every idle session (logging out); checked-out ones close on return."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for session in idle:
            _close_quietly(session)


def _close_quietly(session: Any) -> None:
    with serialized():
        try:
            session.close()
        except Exception as exc:  # the session may already be gone with the device
            _log.debug("closing a PKCS#11 session failed: %s", type(exc).__name__)


def get_pool(
    lib: Any,
    ref: TokenRef,
    pin: str,
    max_sessions: int,
    where: str,
    pin_source: str = "the PIN setting",
) -> TokenPool:
    """The pool for ``ref`` in the loaded module ``lib``, logging in with ``pin`` the first time.

    ``pin_source`` names where the PIN came from, for the error if it is refused.
    """
    key = (ref.module, ref.label, ref.serial or "")
    with serialized():
        pool = _pools.get(key)
        if pool is not None:
            if not pool.pin_matches(pin):
                raise AccessDeniedError(
                    f"{where}: this process is logged in to {ref} with a different PIN than "
                    f"the one from {pin_source}; it is wrong, or two configurations disagree"
                )
            return pool
        try:
            matches = [
                t
                for t in lib.get_tokens(token_label=ref.label)
                if ref.serial is None or _serial(t) == ref.serial
            ]
            if not matches:
                raise KeyNotFoundError(f"{where}: {ref} is no longer present in {ref.module}")
            pool = TokenPool(ref, matches[0], pin, max_sessions)
        except Exception as exc:
            raise translate(exc, doing="log in", where=where, pin_source=pin_source) from None
        _pools[key] = pool
        return pool


def drop_pool(pool: TokenPool) -> None:
    """Forget ``pool`` (after its sessions or login were lost) and close what it holds."""
    with serialized():
        for key, value in list(_pools.items()):
            if value is pool:
                del _pools[key]
    pool.close()


def close_all() -> None:
    """Close every pooled session and finalize every module this provider loaded.

    For tests and orderly shutdown: the next operation loads and logs in again (and a module
    such as SoftHSM2 re-reads its configuration).
    """
    with serialized():
        pools = list(_pools.values())
        _pools.clear()
        for pool in pools:
            pool.close()
        for path, lib in list(_modules.items()):
            try:
                lib.finalize()
            except Exception as exc:
                _log.debug("C_Finalize on %s failed: %s", path, type(exc).__name__)
        _modules.clear()
