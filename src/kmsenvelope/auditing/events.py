"""One audit event: a provider's ``wrap`` or ``unwrap`` of a data key, and how it ended.

An event names the key and the provider, never key material nor the encryption context's
values: the context is recorded as ``context_sha256``, the SHA-256 of its canonical encoding
(:func:`kmsenvelope.format.header.encode_context`), so an auditor holding a context can check
it was the one used without the log revealing it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..format.header import encode_context

__all__ = ["OPERATIONS", "AuditEvent", "Operation", "Outcome", "context_sha256", "rfc3339_now"]

Operation = Literal["wrap", "unwrap"]
Outcome = Literal["ok", "error"]
OPERATIONS: tuple[Operation, ...] = ("wrap", "unwrap")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
_second: tuple[int, str] = (-1, "")  # the last whole second, formatted (one strftime a second)


def rfc3339_now() -> str:
    """The current time in UTC, RFC 3339 with microseconds: ``2025-01-31T12:00:00.123456Z``."""
    global _second
    now = time.time_ns() // 1000
    seconds, micros = divmod(now, 1_000_000)
    cached = _second
    if cached[0] != seconds:
        cached = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{cached[1]}.{micros:06d}Z"


def context_sha256(context: Mapping[str, str]) -> str:
    """Hex SHA-256 of the canonical encoding of ``context`` (the envelope header's)."""
    return hashlib.sha256(encode_context(context)).hexdigest()


def _scheme(key_id: str) -> str:
    scheme, sep, _rest = key_id.partition(":")
    return scheme if sep else ""


def check_operation(operation: str) -> Operation:
    """``operation`` if it is ``"wrap"`` or ``"unwrap"``; ``ValueError`` otherwise."""
    if operation not in OPERATIONS:
        raise ValueError(f"an audit operation is 'wrap' or 'unwrap', not {operation!r}")
    return operation


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What was done with which key, when, and how it ended (``error``: the exception class
    name, only when ``outcome`` is ``"error"``; ``peer_uid``/``peer_pid``: the HSM daemon's
    client, when known)."""

    time: str
    operation: Operation
    key_id: str
    provider: str
    outcome: Outcome
    context_sha256: str
    error: str | None = None
    peer_uid: int | None = None
    peer_pid: int | None = None

    @classmethod
    def of(
        cls,
        operation: str,
        key_id: str,
        provider: str | None,
        context: Mapping[str, str],
        *,
        error: str | None = None,
        peer: tuple[int, int] | None = None,
    ) -> AuditEvent:
        """The event of a call that ended now (``provider``: the key's scheme when None)."""
        return cls(
            time=rfc3339_now(),
            operation=check_operation(operation),
            key_id=key_id,
            provider=_scheme(key_id) if provider is None else provider,
            outcome="ok" if error is None else "error",
            context_sha256=context_sha256(context),
            error=error,
            peer_uid=None if peer is None else peer[0],
            peer_pid=None if peer is None else peer[1],
        )

    def as_dict(self) -> dict[str, str | int]:
        """The fields that are set, in a fixed order (``error`` and the peer only when known)."""
        out: dict[str, str | int] = {
            "time": self.time,
            "operation": self.operation,
            "key_id": self.key_id,
            "provider": self.provider,
            "outcome": self.outcome,
        }
        if self.error is not None:
            out["error"] = self.error
        out["context_sha256"] = self.context_sha256
        if self.peer_uid is not None:
            out["peer_uid"] = self.peer_uid
        if self.peer_pid is not None:
            out["peer_pid"] = self.peer_pid
        return out

    def to_json(self) -> str:
        """One line of JSON, ASCII only (a key id cannot break the line or the terminal)."""
        return _ENCODER.encode(self.as_dict())
