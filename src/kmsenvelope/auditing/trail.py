"""The audit trail: one event per provider ``wrap``/``unwrap`` to every configured sink, and an
OpenTelemetry span around the call when tracing is set up.

A sink that fails makes the operation fail with :class:`AuditSinkError` naming the sink, unless
``best_effort`` is set: then the first failure of a burst is a warning on ``kmsenvelope.audit``
(and the recovery another, with the number of events lost) and the operation goes on. With no
sinks and no tracing, :meth:`AuditTrail.call` costs a method call and a dict lookup.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from ..config import AuditSettings, Config
from .events import AuditEvent, Operation, check_operation
from .sinks import AUDIT_LOGGER, AuditSinkError, Sink, make_sink
from .tracing import OTEL_TRACE, Tracing

__all__ = ["AuditTrail"]

_log = logging.getLogger(AUDIT_LOGGER)
_NOOP: AbstractContextManager[None] = contextlib.nullcontext()
Peer = tuple[int, int]


def _scheme(key_id: str) -> str:
    scheme, sep, _rest = key_id.partition(":")
    return scheme if sep else ""


def _error_name(error: BaseException | type[BaseException] | str | None) -> str | None:
    if error is None or isinstance(error, str):
        return error
    return error.__name__ if isinstance(error, type) else type(error).__name__


def _reason(exc: Exception) -> str:
    """One line on why a sink failed (never an event's content: there is no secret in it,
    but the line is about the sink)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(exc)
    return text if isinstance(exc, OSError) and text else f"{type(exc).__name__}: {text}"


class AuditTrail:
    """Records provider calls: ``sinks`` (see :mod:`kmsenvelope.auditing.sinks`),
    ``best_effort`` (a failing sink does not fail the operation) and ``tracer_provider`` (an
    OpenTelemetry ``TracerProvider``; default: the global one once configured)."""

    def __init__(
        self,
        sinks: Sequence[Sink] = (),
        *,
        best_effort: bool = False,
        tracer_provider: Any = None,
    ) -> None:
        self._sinks: tuple[Sink, ...] = tuple(sinks)
        self.best_effort = best_effort
        self._tracing = Tracing(tracer_provider)
        # No sink and no tracer given: only an OpenTelemetry imported later can make a call
        # worth recording (see idle).
        # (A subclass that records in its own ``call`` is never idle.)
        self._quiet = (
            not self._sinks and tracer_provider is None and type(self).call is AuditTrail.call
        )
        self._lock = threading.Lock()
        self._lost: dict[str, int] = {}  # sink name -> events lost in its current failure burst

    @classmethod
    def from_settings(cls, settings: AuditSettings, *, tracer_provider: Any = None) -> AuditTrail:
        """The trail an ``[audit]`` table describes."""
        sinks = [make_sink(spec, settings.sync) for spec in settings.sinks]
        return cls(sinks, best_effort=settings.best_effort, tracer_provider=tracer_provider)

    @classmethod
    def from_config(cls, config: Config, *, tracer_provider: Any = None) -> AuditTrail:
        """The trail of ``config.audit`` (what an :class:`~kmsenvelope.engine.Engine` uses
        unless given one)."""
        return cls.from_settings(config.audit, tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        names = [s.name for s in self._sinks]
        return f"AuditTrail(sinks={names!r}, best_effort={self.best_effort})"

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return self._sinks

    def idle(self) -> bool:
        """True when a call now would record nothing (no sink, and OpenTelemetry not imported
        nor given): the caller may then skip :meth:`call` (one dict lookup, for the hot path).
        False does not mean that anything will be recorded: :meth:`call` decides."""
        return self._quiet and OTEL_TRACE not in sys.modules

    def call(
        self,
        operation: str,
        key_id: str,
        provider: str | None,
        context: Mapping[str, str],
        peer: Peer | None = None,
    ) -> AbstractContextManager[None]:
        """Surround one provider call: on leaving the block, one event -- ``ok``, or ``error``
        with the exception's class -- goes to every sink, then the exception (if any) goes on.

        ``provider`` is the key's scheme when None. A sink failure raises
        :class:`AuditSinkError` from the block even when the call succeeded, so a data key
        unwrapped in it is never returned unrecorded.
        """
        if not self._sinks and (not self._tracing.maybe_active() or self._tracing.tracer() is None):
            return _NOOP
        return _Call(self, check_operation(operation), key_id, provider, context, peer)

    def record(
        self,
        operation: str,
        key_id: str,
        provider: str | None,
        context: Mapping[str, str],
        *,
        error: BaseException | type[BaseException] | str | None = None,
        peer: Peer | None = None,
    ) -> AuditEvent:
        """Record a call made elsewhere (the HSM daemon records its clients' calls with
        ``peer=(uid, pid)``); ``error`` (an exception, its class or class name) makes the
        outcome ``error``. Returns the event; :class:`AuditSinkError` as for :meth:`call`."""
        event = AuditEvent.of(
            operation, key_id, provider, context, error=_error_name(error), peer=peer
        )
        self._emit(event)
        return event

    def flush(self) -> None:
        """Sync every record written so far now (``batch`` mode syncs within its window)."""
        for sink in self._sinks:
            try:
                sink.flush()
            except Exception as exc:
                if not self.best_effort:
                    raise AuditSinkError(f"audit sink {sink.name} failed: {_reason(exc)}") from exc
                self._lose(sink, exc)

    def _emit(self, event: AuditEvent, *, strict: bool = True) -> None:
        """``event`` to every sink; the first failure raised after all were tried (unless
        best effort, or not ``strict``: an interrupted call stays an interruption)."""
        line = event.to_json()
        failure: tuple[Sink, Exception] | None = None
        for sink in self._sinks:
            try:
                sink.emit(event, line)
            except Exception as exc:
                if self.best_effort or not strict:
                    self._lose(sink, exc)
                elif failure is None:
                    failure = (sink, exc)
            else:
                if self._lost:
                    self._recovered(sink)
        if failure is not None:
            failed, cause = failure
            raise AuditSinkError(
                f"audit sink {failed.name} failed: {_reason(cause)}; the {event.operation} with "
                f"{event.key_id} did not complete (set [audit] best_effort = true to go on "
                "without the sink)"
            ) from cause

    def _lose(self, sink: Sink, exc: Exception) -> None:
        with self._lock:
            lost = self._lost.get(sink.name, 0)
            self._lost[sink.name] = lost + 1
        if lost == 0:
            _log.warning(
                "audit sink %s failed: %s; events are lost until it works again "
                "(best_effort is set: operations go on)",
                sink.name,
                _reason(exc),
            )

    def _recovered(self, sink: Sink) -> None:
        with self._lock:
            lost = self._lost.pop(sink.name, 0)
        if lost:
            _log.warning("audit sink %s works again; %d event(s) were lost", sink.name, lost)


class _Call:
    """One provider call in progress (see :meth:`AuditTrail.call`)."""

    __slots__ = ("_context", "_key_id", "_operation", "_peer", "_provider", "_span", "_trail")

    def __init__(
        self,
        trail: AuditTrail,
        operation: Operation,
        key_id: str,
        provider: str | None,
        context: Mapping[str, str],
        peer: Peer | None,
    ) -> None:
        self._trail = trail
        self._operation = operation
        self._key_id = key_id
        self._provider = provider
        self._context = context
        self._peer = peer
        self._span: tuple[Any, Any] | None = None

    def __enter__(self) -> None:
        tracing = self._trail._tracing
        if tracing.maybe_active():
            provider = _scheme(self._key_id) if self._provider is None else self._provider
            self._span = tracing.start(self._operation, self._key_id, provider)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        error = None if exc_type is None else exc_type.__name__
        try:
            if self._span is not None:
                Tracing.finish(self._span, error)
        finally:
            trail = self._trail
            if trail._sinks:
                event = AuditEvent.of(
                    self._operation,
                    self._key_id,
                    self._provider,
                    self._context,
                    error=error,
                    peer=self._peer,
                )
                trail._emit(event, strict=exc_type is None or issubclass(exc_type, Exception))
