"""OpenTelemetry spans for provider calls, when the application has set up tracing.

A span ``kmsenvelope.wrap`` / ``kmsenvelope.unwrap`` surrounds each provider call, with the
attributes ``kmsenvelope.key_id``, ``kmsenvelope.provider`` and ``kmsenvelope.outcome``
(``ok`` | ``error``), and on failure ``error.type`` (the exception class) and an error status;
never key material, never the context. Spans are made only when ``opentelemetry.trace`` is
already imported and a tracer provider is set (the application's ``set_tracer_provider``, or
``opentelemetry-instrument``), or when one is given to :class:`Tracing`: kmsenvelope never
imports OpenTelemetry itself (55 ms at start-up), and without it this costs a dict lookup.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

__all__ = ["OTEL_TRACE", "Tracing"]

OTEL_TRACE = "opentelemetry.trace"
INSTRUMENTATION = "kmsenvelope"


class Tracing:
    """Makes spans through ``provider`` (an OpenTelemetry ``TracerProvider``), or through the
    global one once the application has configured it."""

    __slots__ = ("_cached", "_provider")

    def __init__(self, provider: Any = None) -> None:
        self._provider = provider
        self._cached: tuple[Any, Any] | None = None  # (provider, its tracer)

    def maybe_active(self) -> bool:
        """Cheap: False when no span can be made (OpenTelemetry not imported, none given)."""
        return self._provider is not None or sys.modules.get(OTEL_TRACE) is not None

    def tracer(self) -> Any:
        """The tracer to use now, or None (not imported, or no tracer provider set)."""
        provider = self._provider
        if provider is None:
            trace = _module()
            if trace is None:
                return None
            provider = trace.get_tracer_provider()
            if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
                return None
        cached = self._cached
        if cached is not None and cached[0] is provider:
            return cached[1]
        version = getattr(sys.modules.get("kmsenvelope"), "__version__", None)
        tracer = provider.get_tracer(INSTRUMENTATION, version)
        self._cached = (provider, tracer)
        return tracer

    def start(self, operation: str, key_id: str, provider: str) -> tuple[Any, Any] | None:
        """Enter a current span for the call: ``(context manager, span)``, or None."""
        tracer = self.tracer()
        if tracer is None:
            return None
        manager = tracer.start_as_current_span(
            f"kmsenvelope.{operation}",
            attributes={"kmsenvelope.key_id": key_id, "kmsenvelope.provider": provider},
            record_exception=False,  # an exception's text is the provider's: not exported
            set_status_on_exception=False,
        )
        return manager, manager.__enter__()

    @staticmethod
    def finish(started: tuple[Any, Any], error: str | None) -> None:
        """Set the outcome on the span and end it."""
        manager, span = started
        try:
            span.set_attribute("kmsenvelope.outcome", "ok" if error is None else "error")
            if error is not None:
                span.set_attribute("error.type", error)
                trace = _module()
                if trace is not None:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        finally:
            manager.__exit__(None, None, None)


def _module() -> ModuleType | None:
    module = sys.modules.get(OTEL_TRACE)
    return module if isinstance(module, ModuleType) else None
