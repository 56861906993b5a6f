"""Parsing ``aws-kms:`` key URIs.

Four forms name a KMS key::

    aws-kms:arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
    aws-kms:1234abcd-12ab-34cd-56ef-1234567890ab          (region from settings/chain)
    aws-kms:alias/payments                                (region from settings/chain)
    aws-kms:arn:aws:kms:eu-west-1:111122223333:alias/payments

Only the first is ever recorded in an envelope: it pins the key, the account and the region.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from kmsenvelope.errors import ConfigError

__all__ = ["SCHEME", "KeyRef", "KeyRefKind", "parse_key_uri", "uri_for_arn"]

SCHEME = "aws-kms"
_PREFIX = SCHEME + ":"

# Partitions: aws, aws-cn, aws-us-gov, aws-iso, aws-iso-b, aws-eusc, ...
_ARN = re.compile(
    r"^arn:(?P<partition>aws(?:-[a-z]+)*):kms:(?P<region>[a-z0-9]+(?:-[a-z0-9]+)+):"
    r"(?P<account>\d{12}):(?P<type>key|alias)/(?P<name>.+)$"
)
# Single-Region keys are UUIDs, multi-Region keys are ``mrk-`` + 32 hex digits.
_KEY_ID = re.compile(
    r"^(?:mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$",
    re.IGNORECASE,
)
_ALIAS_NAME = re.compile(r"^[A-Za-z0-9/_-]{1,250}$")


class KeyRefKind(Enum):
    """How a URI names its key."""

    KEY_ARN = "key ARN"
    ALIAS_ARN = "alias ARN"
    KEY_ID = "key id"
    ALIAS = "alias"


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A parsed ``aws-kms:`` URI.

    ``kms_key_id`` is what KMS accepts as ``KeyId``; ``region`` is set only when the URI is an
    ARN (and then wins over any configured region).
    """

    uri: str
    kms_key_id: str
    kind: KeyRefKind
    region: str | None = None
    partition: str | None = None
    account: str | None = None

    @property
    def is_key_arn(self) -> bool:
        """True when the URI already pins one key (no DescribeKey needed to know which)."""
        return self.kind is KeyRefKind.KEY_ARN


def _bad(uri: str, problem: str) -> ConfigError:
    return ConfigError(
        f"invalid AWS KMS key URI {uri!r}: {problem} (expected aws-kms:arn:aws:kms:REGION:"
        "ACCOUNT:key/ID, aws-kms:KEY-ID, aws-kms:alias/NAME or an alias ARN)"
    )


def parse_key_uri(uri: str) -> KeyRef:
    """Parse an ``aws-kms:`` URI, or raise ``ConfigError`` saying what is wrong with it."""
    if not isinstance(uri, str) or not uri.startswith(_PREFIX):
        raise _bad(str(uri), f"it does not start with {_PREFIX!r}")
    rest = uri[len(_PREFIX) :]
    if not rest:
        raise _bad(uri, "no key after the scheme")
    if rest != rest.strip() or any(c.isspace() for c in rest):
        raise _bad(uri, "it contains whitespace")
    if rest.startswith("arn:"):
        m = _ARN.match(rest)
        if m is None:
            raise _bad(uri, "not a KMS key or alias ARN")
        name = m["name"]
        if m["type"] == "key":
            if not _KEY_ID.match(name):
                raise _bad(uri, f"{name!r} is not a KMS key id")
            kind = KeyRefKind.KEY_ARN
        else:
            if not _ALIAS_NAME.match(name):
                raise _bad(uri, f"{name!r} is not a valid alias name")
            kind = KeyRefKind.ALIAS_ARN
        return KeyRef(uri, rest, kind, m["region"], m["partition"], m["account"])
    if rest.startswith("alias/"):
        if not _ALIAS_NAME.match(rest[len("alias/") :]):
            raise _bad(uri, "alias names may contain only letters, digits, '/', '_' and '-'")
        return KeyRef(uri, rest, KeyRefKind.ALIAS)
    if _KEY_ID.match(rest):
        return KeyRef(uri, rest, KeyRefKind.KEY_ID)
    raise _bad(uri, f"{rest!r} is neither an ARN, a key id nor alias/NAME")


def uri_for_arn(arn: str) -> str:
    """The URI recorded in envelopes for a resolved key ARN."""
    return _PREFIX + arn
