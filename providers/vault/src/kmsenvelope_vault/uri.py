"""Key URIs of the ``vault-transit`` scheme.

::

    vault-transit:https://HOST[:PORT]/MOUNT/keys/NAME           the key (its latest version)
    vault-transit:https://HOST[:PORT]/MOUNT/keys/NAME/VERSION   one version (what stanzas record)

The server's address is part of the URI, so ``allowed_keys`` can pin which server an envelope
may make us send a token to. ``MOUNT`` is the Transit mount path and may have several segments
(``transit``, ``team/transit``). ``http://`` is accepted only for loopback hosts (``localhost``,
``127.0.0.0/8``, ``::1``): anywhere else the token and data keys would cross the network in clear.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from kmsenvelope import ConfigError

__all__ = ["SCHEME", "KeyUri", "is_loopback", "parse_key_uri"]

SCHEME = "vault-transit"

# Transit key names follow Vault's GenericNameRegex: word characters, with '-' and '.' inside.
_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9_])?$")
_MOUNT_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")
_EXAMPLE = f"{SCHEME}:https://HOST:PORT/MOUNT/keys/NAME[/VERSION]"


@dataclass(frozen=True, slots=True)
class KeyUri:
    """A parsed key URI: server address, Transit mount, key name, maybe a version."""

    address: str
    mount: str
    name: str
    version: int | None = None

    @property
    def uri(self) -> str:
        """The canonical URI (``vault-transit:https://host:port/mount/keys/name[/version]``)."""
        tail = f"/{self.version}" if self.version is not None else ""
        return f"{SCHEME}:{self.address}/{self.mount}/keys/{self.name}{tail}"

    def with_version(self, version: int | None) -> KeyUri:
        """The same key at ``version`` (None: versionless)."""
        return KeyUri(self.address, self.mount, self.name, version)

    def same_key(self, other: KeyUri) -> bool:
        """True if ``other`` names the same key (any version) on the same server and mount."""
        return (self.address, self.mount, self.name) == (other.address, other.mount, other.name)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP literal (no name resolution: DNS must not decide)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bad(uri: str, problem: str) -> ConfigError:
    return ConfigError(f"invalid {SCHEME} key URI {uri!r}: {problem} (expected {_EXAMPLE})")


def _address(uri: str, rest: str) -> tuple[str, str]:
    """``(canonical address, path)`` of the URL after the scheme."""
    try:
        parts = urlsplit(rest)
        port = parts.port
    except ValueError as exc:
        raise _bad(uri, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise _bad(uri, "the server address must be an https:// URL")
    host = (parts.hostname or "").lower()
    if not host or "\\" in parts.netloc or "%" in parts.netloc:
        raise _bad(uri, "the server address has no valid host")
    if parts.username is not None or parts.password is not None:
        raise _bad(uri, "the server address must not contain user information")
    if parts.query or parts.fragment:
        raise _bad(uri, "the URI must not have a query or fragment")
    if scheme == "http" and not is_loopback(host):
        raise _bad(
            uri,
            f"http:// is refused for {host}: only loopback hosts (localhost, 127.0.0.1, ::1) may "
            "be reached without TLS, as the token and data keys would cross the network in clear; "
            "use https://",
        )
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    default = 443 if scheme == "https" else 80
    address = f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"
    return address, parts.path


def parse_key_uri(uri: str) -> KeyUri:
    """Parse a ``vault-transit:`` key URI; raise ``ConfigError`` naming the problem."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme != SCHEME:
        raise _bad(uri, f"the scheme must be {SCHEME!r}")
    address, path = _address(uri, rest)
    segments = path.strip("/").split("/") if path.strip("/") else []
    version: int | None = None
    if len(segments) >= 4 and segments[-3] == "keys" and segments[-1].isdigit():
        if not _VERSION.match(segments[-1]):
            raise _bad(uri, "a key version is a whole number from 1, without leading zeros")
        version = int(segments[-1])
        mount, name = segments[:-3], segments[-2]
    elif len(segments) >= 3 and segments[-2] == "keys":
        mount, name = segments[:-2], segments[-1]
    else:
        raise _bad(uri, "the path must be /MOUNT/keys/NAME or /MOUNT/keys/NAME/VERSION")
    for segment in mount:
        if segment == "keys" or not _MOUNT_SEGMENT.match(segment):
            raise _bad(
                uri,
                f"mount path segment {segment!r} is not allowed (letters, digits, '_', '-', '.'; "
                "not 'keys')",
            )
    if not _NAME.match(name):
        raise _bad(uri, "a key name is letters, digits and '_', with '-' or '.' inside")
    return KeyUri(address, "/".join(mount), name, version)
