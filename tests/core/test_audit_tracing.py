"""OpenTelemetry spans around provider calls (with the SDK's in-memory exporter), and nothing
at all -- no import, no failure -- when OpenTelemetry is absent or not configured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kmsenvelope import Engine, NoRecipientError
from kmsenvelope.auditing import AuditTrail
from kmsenvelope.config import Config
from kmsenvelope.memory import InMemoryKEK

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402


def traced() -> tuple[AuditTrail, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return AuditTrail(tracer_provider=provider), exporter


def test_a_span_per_provider_call_with_key_provider_and_outcome() -> None:
    trail, exporter = traced()
    kek = InMemoryKEK.generate("k")
    engine = Engine(config=Config(), keys=[kek], audit=trail)
    engine.decrypt(engine.encrypt(b"x", [kek], {"tenant": "secret-tenant"}))
    wrap, unwrap = exporter.get_finished_spans()
    assert (wrap.name, unwrap.name) == ("kmsenvelope.wrap", "kmsenvelope.unwrap")
    for span in (wrap, unwrap):
        assert dict(span.attributes or {}) == {
            "kmsenvelope.key_id": "memory:k",
            "kmsenvelope.provider": "memory",
            "kmsenvelope.outcome": "ok",
        }
        assert span.status.status_code is not StatusCode.ERROR
        assert span.instrumentation_scope.name == "kmsenvelope"


def test_a_failed_call_is_an_error_span_with_the_error_type() -> None:
    trail, exporter = traced()
    blob = Engine(config=Config()).encrypt(b"x", [InMemoryKEK.generate("k")])
    with pytest.raises(NoRecipientError):
        Engine(config=Config(), keys=[InMemoryKEK.generate("k")], audit=trail).decrypt(blob)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "UnwrapError"
    assert span.attributes["kmsenvelope.outcome"] == "error"
    assert span.events == ()  # no exception text exported


def run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


ROUND_TRIP = """
import json, sys
from kmsenvelope import Engine
from kmsenvelope.config import AuditSettings, Config
from kmsenvelope.memory import InMemoryKEK
kek = InMemoryKEK.generate("k")
engine = Engine(config=Config(audit=AuditSettings(sinks=("jsonl:{log}",))), keys=[kek])
assert engine.decrypt(engine.encrypt(b"x", [kek])) == b"x"
"""


def test_the_global_tracer_provider_is_used_once_configured(tmp_path: Path) -> None:
    code = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import "
        "InMemorySpanExporter\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        + ROUND_TRIP.format(log=tmp_path / "a.jsonl")
        + "print(json.dumps([s.name for s in exporter.get_finished_spans()]))\n"
    )
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["kmsenvelope.wrap", "kmsenvelope.unwrap"]


def test_opentelemetry_is_never_imported_by_kmsenvelope(tmp_path: Path) -> None:
    code = ROUND_TRIP.format(log=tmp_path / "a.jsonl") + (
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))\n"
    )
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 2


def test_everything_works_without_opentelemetry(tmp_path: Path) -> None:
    code = "import sys\nsys.modules['opentelemetry'] = None  # as if not installed\n" + (
        ROUND_TRIP.format(log=tmp_path / "a.jsonl")
    )
    code += (
        "from kmsenvelope.auditing import AuditTrail\n"
        "trail = AuditTrail()\n"
        "with trail.call('wrap', 'memory:k', None, {}):\n"
        "    pass\n"
        "print('ok')\n"
    )
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 2


def test_tracing_configured_after_the_engine_was_made_is_honoured(tmp_path: Path) -> None:
    code = (
        "import opentelemetry.trace\n"  # imported, not configured yet: no span
        + ROUND_TRIP.format(log=tmp_path / "a.jsonl")
        + "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import "
        "InMemorySpanExporter\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        "engine.encrypt(b'y', [kek])\n"
        "print(json.dumps([s.name for s in exporter.get_finished_spans()]))\n"
    )
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["kmsenvelope.wrap"]
