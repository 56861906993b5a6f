"""Audit events for every provider: one structured event per ``wrap`` and ``unwrap`` -- failed
attempts included -- to the sinks of ``[audit] sinks`` (``jsonl:PATH``, ``syslog``,
``logging``), and OpenTelemetry spans around provider calls when tracing is set up.

The :class:`~kmsenvelope.engine.Engine` records its provider calls through an
:class:`AuditTrail` (built from its configuration unless given one). See docs/audit.md.
"""

from __future__ import annotations

from .events import AuditEvent, context_sha256
from .sinks import (
    AUDIT_LOGGER,
    AuditSinkError,
    JsonlSink,
    LoggingSink,
    Sink,
    SyslogSink,
    make_sink,
)
from .trail import AuditTrail

__all__ = [
    "AUDIT_LOGGER",
    "AuditEvent",
    "AuditSinkError",
    "AuditTrail",
    "JsonlSink",
    "LoggingSink",
    "Sink",
    "SyslogSink",
    "context_sha256",
    "make_sink",
]
