"""Key URIs of the ``azure-kv`` scheme.

::

    azure-kv:https://VAULT.vault.azure.net/keys/NAME[/VERSION]        Key Vault
    azure-kv:https://HSM.managedhsm.azure.net/keys/NAME[/VERSION]     Managed HSM

Any other ``https`` host (and port) is accepted too, for sovereign clouds, private endpoints and
emulators. Without a version the URI names the key's *current* version, resolved at wrap time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from kmsenvelope import ConfigError

__all__ = ["SCHEME", "KeyUri", "parse_key_uri"]

SCHEME = "azure-kv"

# Key Vault object names: 1-127 characters, letters, digits and dashes.
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
# Versions are 32 hex digits in Azure; emulators may use other alphanumeric ids.
_VERSION = re.compile(r"^[0-9A-Za-z]{1,64}$")
_HSM_SUFFIXES = (".managedhsm.azure.net", ".managedhsm.azure.cn", ".managedhsm.usgovcloudapi.net")
_EXAMPLE = f"{SCHEME}:https://VAULT.vault.azure.net/keys/NAME[/VERSION]"


@dataclass(frozen=True, slots=True)
class KeyUri:
    """A parsed ``azure-kv`` key URI: the vault's base URL, the key name, maybe a version."""

    vault_url: str
    name: str
    version: str | None = None

    @property
    def uri(self) -> str:
        """The canonical URI (``azure-kv:https://host/keys/name[/version]``)."""
        return f"{SCHEME}:{self.key_url}"

    @property
    def key_url(self) -> str:
        """The Key Vault key identifier (``kid``) this URI names, without the scheme."""
        tail = f"/{self.version}" if self.version else ""
        return f"{self.vault_url}/keys/{self.name}{tail}"

    @property
    def is_managed_hsm(self) -> bool:
        """True for a Managed HSM pool (decides only which role names errors suggest)."""
        host = self.vault_url.partition("://")[2].partition(":")[0]
        return host.endswith(_HSM_SUFFIXES)

    def with_version(self, version: str) -> KeyUri:
        """The same key at ``version``."""
        return KeyUri(self.vault_url, self.name, version)

    def same_key(self, other: KeyUri) -> bool:
        """True if ``other`` names the same key (any version) in the same vault.

        Key Vault names are case-insensitive.
        """
        return self.vault_url == other.vault_url and self.name.lower() == other.name.lower()


def _bad(uri: str, problem: str) -> ConfigError:
    return ConfigError(f"invalid {SCHEME} key URI {uri!r}: {problem} (expected {_EXAMPLE})")


def parse_key_uri(uri: str) -> KeyUri:
    """Parse ``azure-kv:https://…/keys/NAME[/VERSION]``; raise ``ConfigError`` if malformed."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme != SCHEME:
        raise _bad(uri, f"the scheme must be {SCHEME!r}")
    try:
        parts = urlsplit(rest)
        port = parts.port
    except ValueError as exc:
        raise _bad(uri, str(exc)) from None
    if parts.scheme.lower() != "https":
        raise _bad(uri, "the vault URL must use https")
    host = (parts.hostname or "").lower()
    if not host or "\\" in parts.netloc:
        raise _bad(uri, "the vault URL has no valid host")
    if parts.username is not None or parts.password is not None:
        raise _bad(uri, "the vault URL must not contain user information")
    if parts.query or parts.fragment:
        raise _bad(uri, "the vault URL must not have a query or fragment")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    vault_url = f"https://{host}" if port in (None, 443) else f"https://{host}:{port}"
    segments = parts.path.strip("/").split("/")
    if len(segments) not in (2, 3) or segments[0] != "keys":
        raise _bad(uri, "the path must be /keys/NAME or /keys/NAME/VERSION")
    name = segments[1]
    if not _NAME.match(name):
        raise _bad(uri, "a key name is 1-127 letters, digits or dashes")
    version = segments[2] if len(segments) == 3 else None
    if version is not None and not _VERSION.match(version):
        raise _bad(uri, "a key version is letters and digits only")
    return KeyUri(vault_url, name, version)
