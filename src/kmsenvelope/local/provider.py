"""The ``local`` provider: KEKs named ``local:NAME`` or ``local:NAME/VERSION``.

Settings (``[providers.local]``, declared in ``LOCAL_SETTINGS``): ``keystore`` -- the keystore
directory (also ``KMSENVELOPE_KEYSTORE``; default ``<user data dir>/kmsenvelope/keystore``);
``socket`` -- use the keystore through the HSM daemon listening there (``kmsenvelope hsm serve``;
also ``KMSENVELOPE_HSM_SOCKET``, which wins; an absolute path): this process then never reads
the keystore nor needs its passphrase; ``daemon_uid`` -- the uid the daemon must run as (checked
by peer credentials before anything is sent); ``audit_sync`` -- ``"always"`` or ``"batch"``
for the keystore's audit log (:mod:`kmsenvelope.durability`). Any other name is an error (a
typo must not silently select the default keystore). The passphrase comes from
``KMSENVELOPE_KEYSTORE_PASSPHRASE`` or, on a terminal, a prompt.
"""

from __future__ import annotations

import getpass
import hmac
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..durability import DEFAULT_SYNC, SYNC_ENV, SYNC_MODES, SyncMode, parse_sync_mode
from ..errors import ConfigError, KeystoreError
from ..kek import WrappedKey
from ..settings import Setting, SettingsSchema
from .keyfiles import VERSION_PATTERN, check_name
from .keystore import Keystore
from .remote import HSM_SOCKET_ENV, RemoteLocalKEK, client_for
from .unlock import PASSPHRASE_ENV, check_passphrase_length

__all__ = [
    "LOCAL_SETTINGS",
    "LocalKEK",
    "audit_sync",
    "daemon_socket",
    "default_keystore_dir",
    "factory",
    "keystore_dir",
    "open_keystore",
    "passphrase_from_env",
]


def default_keystore_dir() -> Path:
    """``<user data dir>/kmsenvelope/keystore``."""
    import platformdirs

    return Path(platformdirs.user_data_dir("kmsenvelope")) / "keystore"


LOCAL_SETTINGS = SettingsSchema(
    "local",
    (
        Setting(
            "keystore",
            "path",
            help="keystore directory (default: <user data dir>/kmsenvelope/keystore)",
        ),
        Setting(
            "socket",
            "path",
            help="use the keys through the HSM daemon at this Unix socket (hsm serve)",
        ),
        Setting(
            "daemon_uid",
            "integer",
            minimum=0,
            help="the uid the HSM daemon runs as (default: root, your own uid or the owner of "
            "the socket's directory); anyone else listening at the socket is refused",
        ),
        Setting(
            "audit_sync",
            "string",
            choices=SYNC_MODES,
            help='when audit records reach the disk: "always" or "batch" (default)',
        ),
    ),
)
"""The settings of the ``local`` provider."""


def keystore_dir(settings: Mapping[str, Any]) -> Path:
    """The keystore directory named by the settings (checked against ``LOCAL_SETTINGS``:
    an unknown name such as ``keystor`` is a ``ConfigError``), or the default."""
    value = LOCAL_SETTINGS.parse(settings)["keystore"]
    return default_keystore_dir() if value is None else Path(value)


def passphrase_from_env(*, prompt: str = "Keystore passphrase: ", confirm: bool = False) -> str:
    """The keystore passphrase from the environment, or asked on the terminal."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if not sys.stdin.isatty():
        raise KeystoreError(
            f"the keystore passphrase is needed: set {PASSPHRASE_ENV} or run on a terminal"
        )
    if confirm:  # a new passphrase: refuse a short one before asking for it again
        return ask_passphrase(prompt, repeat="Repeat passphrase: ", check=check_passphrase_length)
    return ask_passphrase(prompt)


def ask_passphrase(
    prompt: str, *, repeat: str | None = None, check: Callable[[str], None] | None = None
) -> str:
    """A passphrase asked on the terminal, never empty: ``check`` runs on the first answer,
    then (a new passphrase) the ``repeat`` prompt must get the same answer."""
    first = ask_secret(prompt)
    if check is not None:
        check(first)
    if repeat is not None and ask_secret(repeat) != first:
        raise KeystoreError("the two passphrases differ")
    if not first:
        raise KeystoreError("empty passphrase")
    return first


def ask_secret(prompt: str) -> str:
    """``getpass`` on the terminal; end of input (Ctrl-D) is a clean ``KeystoreError``."""
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise KeystoreError("no passphrase given (end of input at the prompt)") from None


def audit_sync(settings: Mapping[str, Any]) -> SyncMode:
    """The keystore audit log's durability: the setting, else ``KMSENVELOPE_AUDIT_SYNC``, else
    the default (``batch``)."""
    value = LOCAL_SETTINGS.parse(settings)["audit_sync"]
    if value is None:
        value = os.environ.get(SYNC_ENV) or DEFAULT_SYNC
        return parse_sync_mode(value, source=SYNC_ENV)
    return parse_sync_mode(value)


def daemon_socket(settings: Mapping[str, Any]) -> Path | None:
    """The HSM daemon's socket (``KMSENVELOPE_HSM_SOCKET``, else the ``socket`` setting), or
    None to use the keystore in this process."""
    value = os.environ.get(HSM_SOCKET_ENV) or LOCAL_SETTINGS.parse(settings)["socket"]
    return Path(value).expanduser() if value else None


_OPEN: dict[tuple[str, str, bytes, tuple[int, int]], Keystore] = {}
_OPEN_LOCK = threading.Lock()
_SLOT_KEY = os.urandom(32)


def open_keystore(settings: Mapping[str, Any]) -> Keystore:
    """Unlock the keystore the settings point at; the keys of one keystore share one open
    ``Keystore`` per process (one audit log descriptor, one group commit, one key cache)."""
    directory = keystore_dir(settings)
    sync = audit_sync(settings)
    passphrase = passphrase_from_env()
    try:  # a directory replaced by another keystore is another keystore
        info = os.stat(directory)
        identity = (info.st_dev, info.st_ino)
    except OSError:
        return Keystore.open(directory, passphrase, audit_sync=sync)  # its error, said there
    digest = hmac.new(_SLOT_KEY, passphrase.encode(), "sha256").digest()  # not the passphrase
    slot = (os.path.abspath(directory), sync, digest, identity)
    with _OPEN_LOCK:
        store = _OPEN.get(slot)
        if store is None:
            store = _OPEN[slot] = Keystore.open(directory, passphrase, audit_sync=sync)
        return store


def parse_uri(uri: str) -> tuple[str, int | None]:
    """``local:NAME`` -> (NAME, None); ``local:NAME/3`` -> (NAME, 3)."""
    if not uri.startswith("local:"):
        raise ConfigError(f"not a local key URI: {uri!r}")
    rest = uri[len("local:") :]
    name, sep, version = rest.partition("/")
    check_name(name)
    if not sep:
        return name, None
    if not VERSION_PATTERN.fullmatch(version):
        raise ConfigError(f"invalid key version in {uri!r} (expected local:NAME/N, N >= 1)")
    return name, int(version)


class LocalKEK:
    """A key in the local keystore; unlocks the keystore on first use."""

    def __init__(self, uri: str, settings: Mapping[str, Any]) -> None:
        self._name, self._version = parse_uri(uri)
        self._uri = uri
        self._settings = dict(settings)
        self._store: Keystore | None = None
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        return self._uri

    def __repr__(self) -> str:
        return f"LocalKEK({self._uri!r})"

    @property
    def keystore(self) -> Keystore:
        with self._lock:
            if self._store is None:
                self._store = open_keystore(self._settings)
            return self._store

    def latest(self) -> LocalKEK:
        """This key at its current version, resolved now (``local:NAME/CURRENT``), so that a
        recipient already at that version is recognised without wrapping anything."""
        current = self.keystore.get(self._name).current
        if self._version == current:
            return self
        kek = LocalKEK(f"local:{self._name}/{current}", self._settings)
        kek._store = self._store
        return kek

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        return self.keystore.wrap(self._name, self._version, dek, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        return self.keystore.unwrap(self._name, wrapped, context)


def factory(uri: str, settings: Mapping[str, Any]) -> LocalKEK | RemoteLocalKEK:
    """Provider factory for the ``local`` scheme (settings checked now, not at first use):
    through the HSM daemon when a socket is configured, else the keystore in this process."""
    LOCAL_SETTINGS.parse(settings)
    socket_path = daemon_socket(settings)
    if socket_path is not None:
        name, version = parse_uri(uri)
        daemon_uid = LOCAL_SETTINGS.parse(settings)["daemon_uid"]
        return RemoteLocalKEK(uri, name, version, client_for(socket_path, daemon_uid))
    return LocalKEK(uri, settings)
