"""Store URLs (``sqlite:///app.db?table=…``, ``s3://bucket/prefix``): parsed once here, then
opened through the store a plugin registered for the scheme (``kmsenvelope_register_stores``).

``SCHEME://REST`` is a store URL; anything else is a path. A URL is percent-encoded and has no
fragment; its query parameters are ``NAME=VALUE`` pairs, each name at most once (which ones a
store accepts is the store's to check, with :meth:`StoreURL.check_params`). A password in the
URL is kept out of every message and ``repr``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlencode

from ..errors import ConfigError, KmsEnvelopeError, PluginError
from .store import EnvelopeStore

if TYPE_CHECKING:
    from ..config import Config
    from ..plugins import ProviderRegistry

__all__ = ["StoreURL", "is_store_url", "open_store", "parse_store_url"]

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)\Z", re.DOTALL)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_PORT = re.compile(r"[0-9]{1,5}\Z")


def is_store_url(text: str) -> bool:
    """Whether ``text`` is written as a store URL (``SCHEME://…``) rather than a path."""
    return _URL.match(text) is not None


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL: ``scheme://[user[:password]@]host[:port][/path][?params]``.

    ``host`` is the bucket, container or server (empty for a local file: ``sqlite:///app.db``);
    ``path`` is what follows the ``/`` after it, percent-decoded (``prefix/2026``, ``app.db``,
    ``/var/db/app.db`` for ``sqlite:////var/db/app.db``); ``params`` the query, decoded.
    ``text`` is the URL as written, with any password replaced by ``***``.
    """

    scheme: str
    host: str
    path: str
    params: Mapping[str, str]
    text: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    port: int | None = None

    def error(self, problem: str) -> ConfigError:
        """A one-line ``ConfigError`` about this URL (password hidden)."""
        return ConfigError(f"store URL {self.text}: {problem}")

    def check_params(
        self, *, required: Collection[str] = (), optional: Collection[str] = ()
    ) -> None:
        """Refuse a query parameter the store does not know, and a missing required one."""
        unknown = sorted(set(self.params) - set(required) - set(optional))
        if unknown:
            accepted = ", ".join(sorted({*required, *optional})) or "none"
            raise self.error(f"unknown parameter {unknown[0]!r} (accepted: {accepted})")
        missing = [name for name in required if not self.params.get(name)]
        if missing:
            raise self.error(f"the parameter {missing[0]!r} is required")

    def local_path(self) -> Path:
        """The local file a ``scheme:///PATH`` URL names (relative to the working directory
        unless it starts with ``/``: ``sqlite:////var/db/app.db``)."""
        if self.host or self.username is not None or self.port is not None:
            raise self.error(f"names a local file: write {self.scheme}:///PATH (no host)")
        if not self.path:
            raise self.error("names no file")
        return Path(self.path)

    @property
    def identity(self) -> str:
        """What the URL designates, independent of the working directory and the order of its
        parameters, without the password: it names a job's journal."""
        user = f"{self.username}@" if self.username is not None else ""
        port = f":{self.port}" if self.port is not None else ""
        path = self.path
        if not self.host and path:
            path = str(Path(path).resolve())
        query = urlencode(sorted(self.params.items()))
        return f"{self.scheme}://{user}{self.host}{port}/{path}" + (f"?{query}" if query else "")


def parse_store_url(text: str) -> StoreURL:
    """Parse ``SCHEME://…`` (``ConfigError`` for a malformed one; never echoes a password)."""
    match = _URL.match(text)
    if match is None:
        raise ConfigError("not a store URL: expected SCHEME://…")
    scheme, rest = match.group("scheme").lower(), match.group("rest")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    username = password = None
    if at:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text)
        password = unquote(pass_text) if colon else None
    shown_authority = (
        f"{userinfo.partition(':')[0]}{':***' if password is not None else ''}@{hostport}"
        if at
        else hostport
    )
    shown = f"{scheme}://{shown_authority}{slash}{tail}"
    if _UNSAFE.search(text):
        raise ConfigError(
            f"store URL {shown!r}: spaces and control characters must be percent-encoded"
        )
    path_text, question, query = tail.partition("?")
    if "#" in rest:
        raise ConfigError(f"store URL {shown}: a fragment ('#') is not allowed")
    if "?" in authority:  # scheme://host?query: no path
        hostport, question, query = hostport.partition("?")
        shown = f"{scheme}://{shown_authority}"
    host, port = _host_and_port(hostport, shown)
    params: dict[str, str] = {}
    if question and query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ConfigError(
                f"store URL {shown}: the query must be NAME=VALUE pairs joined by '&'"
            ) from None
        for name, value in pairs:
            if name in params:
                raise ConfigError(f"store URL {shown}: the parameter {name!r} is given twice")
            params[name] = value
    return StoreURL(
        scheme=scheme,
        host=unquote(host),
        path=unquote(path_text),
        params=MappingProxyType(params),
        text=shown,
        username=username,
        password=password,
        port=port,
    )


def _host_and_port(hostport: str, shown: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` split; a bad port is a ``ConfigError``."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ConfigError(f"store URL {shown}: unclosed '[' in the host")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"store URL {shown}: unexpected {rest!r} after the host")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_or_empty = hostport.partition(":")
        port_text = port_text_or_empty if colon else None
    if port_text is None:
        return host, None
    if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"store URL {shown}: invalid port {port_text!r}")
    return host, int(port_text)


def open_store(url: str | StoreURL, registry: ProviderRegistry, config: Config) -> EnvelopeStore:
    """The store ``url`` names, opened by the factory a plugin registered for its scheme.

    An unknown scheme or a bad URL is a ``ConfigError``; a factory that fails unexpectedly, or
    returns something that is not an :class:`EnvelopeStore`, a ``PluginError``.
    """
    parsed = url if isinstance(url, StoreURL) else parse_store_url(url)
    factory = registry.store_factory(parsed.scheme)
    plugin = registry.stores[parsed.scheme].plugin
    try:
        store = factory(parsed, config)
    except KmsEnvelopeError:
        raise
    except Exception as exc:
        raise PluginError(
            f"the {parsed.scheme!r} store of plugin {plugin!r} failed to open {parsed.text}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(store, EnvelopeStore):
        raise PluginError(
            f"the {parsed.scheme!r} store of plugin {plugin!r} returned a "
            f"{type(store).__name__}, not an EnvelopeStore (list, read, write)"
        )
    return store
