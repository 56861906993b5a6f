"""The ``local`` provider: KEKs named ``local:NAME`` or ``local:NAME/VERSION``.

Settings (``[providers.local]``, declared in ``LOCAL_SETTINGS``): ``keystore`` -- the keystore
directory (also ``KMSENVELOPE_KEYSTORE``; default ``<user data dir>/kmsenvelope/keystore``); any
other name is an error (a typo must not silently select the default keystore). The passphrase
comes from ``KMSENVELOPE_KEYSTORE_PASSPHRASE`` or, on a terminal, a prompt.
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, KeystoreError
from ..kek import WrappedKey
from ..settings import Setting, SettingsSchema
from .keyfiles import VERSION_PATTERN, check_name
from .keystore import Keystore
from .unlock import PASSPHRASE_ENV, check_passphrase_length

__all__ = [
    "LOCAL_SETTINGS",
    "LocalKEK",
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


def open_keystore(settings: Mapping[str, Any]) -> Keystore:
    """Unlock the keystore the settings point at."""
    return Keystore.open(keystore_dir(settings), passphrase_from_env())


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


def factory(uri: str, settings: Mapping[str, Any]) -> LocalKEK:
    """Provider factory for the ``local`` scheme (settings checked now, not at first use)."""
    LOCAL_SETTINGS.parse(settings)
    return LocalKEK(uri, settings)
