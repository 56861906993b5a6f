"""Key URIs of the ``gcp-kms`` scheme.

::

    gcp-kms:projects/P/locations/L/keyRings/R/cryptoKeys/K                        a key
    gcp-kms:projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N    one version

The part after the scheme is exactly the resource name Cloud KMS uses. A symmetric key named
without a version wraps with its *primary* version; every stanza records the version the
service reports (``…/cryptoKeyVersions/N``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kmsenvelope.errors import ConfigError

__all__ = ["SCHEME", "KeyName", "parse_key_uri", "parse_resource"]

SCHEME = "gcp-kms"

# Project ids (``my-proj``, domain-scoped ``example.com:my-proj``) or numbers; locations such as
# ``global``, ``us``, ``europe-west1``; key ring and key ids: 1-63 of [a-zA-Z0-9_-] (Cloud KMS).
_PROJECT = r"[a-z0-9][a-z0-9.:-]{0,62}"
_LOCATION = r"[a-z0-9][a-z0-9-]{0,62}"
_ID = r"[a-zA-Z0-9_-]{1,63}"
_VERSION = r"[1-9][0-9]{0,18}"
_NAME = re.compile(
    rf"projects/(?P<project>{_PROJECT})/locations/(?P<location>{_LOCATION})"
    rf"/keyRings/(?P<ring>{_ID})/cryptoKeys/(?P<key>{_ID})"
    rf"(?:/cryptoKeyVersions/(?P<version>{_VERSION}))?"
)
_EXAMPLE = f"{SCHEME}:projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/N]"


@dataclass(frozen=True, slots=True)
class KeyName:
    """A parsed ``gcp-kms`` key URI: the CryptoKey's parts and, maybe, a version number."""

    project: str
    location: str
    key_ring: str
    crypto_key: str
    version: int | None = None

    @property
    def key_resource(self) -> str:
        """The CryptoKey's resource name (no version)."""
        return (
            f"projects/{self.project}/locations/{self.location}/keyRings/{self.key_ring}"
            f"/cryptoKeys/{self.crypto_key}"
        )

    @property
    def resource(self) -> str:
        """The resource name this URI names: the CryptoKey, or one CryptoKeyVersion of it."""
        if self.version is None:
            return self.key_resource
        return f"{self.key_resource}/cryptoKeyVersions/{self.version}"

    @property
    def uri(self) -> str:
        """The canonical URI (``gcp-kms:`` + the resource name)."""
        return f"{SCHEME}:{self.resource}"

    def with_version(self, version: int | None) -> KeyName:
        """The same CryptoKey at ``version`` (None: the key itself)."""
        return KeyName(self.project, self.location, self.key_ring, self.crypto_key, version)

    def same_key(self, other: KeyName) -> bool:
        """Whether ``other`` names the same CryptoKey (any version)."""
        return self.key_resource == other.key_resource


def parse_resource(name: str) -> KeyName | None:
    """The ``KeyName`` of a Cloud KMS resource name (key or version), or None if it is not one."""
    found = _NAME.fullmatch(name)
    if found is None:
        return None
    version = found.group("version")
    return KeyName(
        found.group("project"),
        found.group("location"),
        found.group("ring"),
        found.group("key"),
        int(version) if version is not None else None,
    )


def parse_key_uri(uri: str) -> KeyName:
    """Parse a ``gcp-kms:`` key URI; ``ConfigError`` (one line, naming the form) if malformed."""
    if not isinstance(uri, str):
        raise ConfigError(f"a {SCHEME} key URI must be a string, not {type(uri).__name__}")
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme != SCHEME:
        raise ConfigError(f"not a {SCHEME} key URI: {uri!r} (expected {_EXAMPLE})")
    parsed = parse_resource(rest)
    if parsed is None:
        raise ConfigError(
            f"invalid {SCHEME} key URI {uri!r}: not a Cloud KMS key resource name "
            f"(expected {_EXAMPLE}; ids are 1-63 letters, digits, '-' or '_')"
        )
    return parsed
