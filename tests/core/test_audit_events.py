"""Audit events: one per provider wrap and unwrap (failed attempts included), through the public
API, to real sinks; a failing sink fails the operation unless best effort."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from core_support import SharedKeyProvider

import kmsenvelope
from kmsenvelope import Engine, NoRecipientError, ProviderRegistry
from kmsenvelope.auditing import (
    AuditEvent,
    AuditSinkError,
    AuditTrail,
    JsonlSink,
    LoggingSink,
    SyslogSink,
)
from kmsenvelope.cache import DataKeyCache
from kmsenvelope.config import AuditSettings, Config
from kmsenvelope.errors import AuditLogError, KeyDisabledError
from kmsenvelope.format.header import DEFAULT_LIMITS, encode_context, parse_header
from kmsenvelope.kek import WrappedKey
from kmsenvelope.local import Keystore
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope.rewrapping import RewrapPlan, rewrap_bytes

CONTEXT = {"tenant": "acme-secret-tenant", "app": "billing"}
FIELDS = {"time", "operation", "key_id", "provider", "outcome", "context_sha256"}


def audited(path: Path, **settings: Any) -> Config:
    return Config(audit=AuditSettings(sinks=(f"jsonl:{path}",), **settings))


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_event_per_wrap_and_unwrap_with_every_field(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    kek = InMemoryKEK.generate("payments")
    engine = Engine(config=audited(log), keys=[kek])
    blob = engine.encrypt(b"card data", [kek], CONTEXT)
    assert engine.decrypt(blob, CONTEXT) == b"card data"
    wrap, unwrap = events(log)
    digest = hashlib.sha256(encode_context(CONTEXT)).hexdigest()
    for event, operation in ((wrap, "wrap"), (unwrap, "unwrap")):
        assert set(event) == FIELDS  # no error, no peer on a successful in-process call
        assert event["operation"] == operation
        assert event["key_id"] == "memory:payments"
        assert event["provider"] == "memory"
        assert event["outcome"] == "ok"
        assert event["context_sha256"] == digest
        assert event["time"].endswith("Z")
        assert datetime.fromisoformat(event["time"]).utcoffset().total_seconds() == 0
    assert os.stat(log).st_mode & 0o777 == 0o600  # created owner-only


def test_every_recipient_is_one_wrap_event(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    first, second = InMemoryKEK.generate("a"), InMemoryKEK.generate("b")
    Engine(config=audited(log)).encrypt(b"x", [first, second], {})
    wraps = events(log)
    assert sorted(e["key_id"] for e in wraps) == ["memory:a", "memory:b"]
    assert {e["operation"] for e in wraps} == {"wrap"}
    assert {e["context_sha256"] for e in wraps} == {hashlib.sha256(encode_context({})).hexdigest()}


def test_a_failed_attempt_is_an_event_with_the_error_class(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    blob = Engine(config=Config()).encrypt(b"x", [InMemoryKEK.generate("k")], CONTEXT)
    impostor = InMemoryKEK.generate("k")  # same name, other key: the unwrap fails
    with pytest.raises(NoRecipientError):
        Engine(config=audited(log)).decrypt(blob, keys=[impostor])
    (event,) = events(log)
    assert event["operation"] == "unwrap"
    assert event["outcome"] == "error"
    assert event["error"] == "UnwrapError"
    assert event["key_id"] == "memory:k"


def test_no_key_material_nor_context_values_in_any_event(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    kek = InMemoryKEK.generate("k")
    engine = Engine(config=audited(log), keys=[kek])
    blob = engine.encrypt(b"secret payload", [kek], CONTEXT)
    engine.decrypt(blob, CONTEXT)
    header, _size = parse_header(blob, DEFAULT_LIMITS)
    dek = engine.unwrap_data_key(header)
    wrapped = header.recipients[0].ciphertext
    text = log.read_text()
    assert len(events(log)) == 3  # wrap, unwrap, and the unwrap of unwrap_data_key
    for secret in (dek, wrapped):
        for encoded in (
            secret.hex(),
            secret.hex().upper(),
            base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("="),
        ):
            assert encoded not in text
    assert "acme-secret-tenant" not in text
    assert "secret payload" not in text


class Recorder(SharedKeyProvider):
    """A provider that records every key it is asked to open."""

    scheme = "rec"
    opened: ClassVar[list[str]] = []

    def __init__(self, uri: str, settings: Mapping[str, Any]) -> None:
        Recorder.opened.append(uri)
        super().__init__(uri, settings)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        inner = WrappedKey("memory", self.kek.key_id, wrapped.algorithm, wrapped.ciphertext)
        return self.kek.unwrap(inner, context)


def test_a_key_not_allowed_is_not_contacted_so_no_event(tmp_path: Path) -> None:
    registry = ProviderRegistry()
    registry.register("rec", Recorder)
    blob = Engine(registry=registry, config=Config()).encrypt(b"x", ["rec:evil", "rec:good"])
    log = tmp_path / "audit.jsonl"
    Recorder.opened = []
    reader = Engine(registry=registry, config=audited(log), allowed_keys=["rec:good"])
    assert reader.decrypt(blob) == b"x"
    assert Recorder.opened == ["rec:good"]
    assert [(e["key_id"], e["provider"]) for e in events(log)] == [("rec:good", "rec")]
    log.unlink()
    nothing = Engine(registry=registry, config=audited(log), allowed_keys=["rec:other"])
    with pytest.raises(NoRecipientError):
        nothing.decrypt(blob)
    assert not log.exists()  # no provider call, no event (the sink never even opened)


def test_a_disabled_local_key_is_a_failed_event(
    keystore: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("KMSENVELOPE_AUDIT_SINKS", f"jsonl:{log}")
    keystore.create_key("main")
    blob = kmsenvelope.encrypt(b"x", ["local:main"], CONTEXT)
    keystore.set_enabled("main", False)
    with pytest.raises(NoRecipientError) as caught:
        kmsenvelope.Engine().decrypt(blob, CONTEXT)
    assert isinstance(caught.value.attempts[0].error, KeyDisabledError)
    wrap, unwrap = events(log)
    assert (wrap["operation"], wrap["outcome"], wrap["provider"]) == ("wrap", "ok", "local")
    assert wrap["key_id"].startswith("local:main")
    assert (unwrap["operation"], unwrap["outcome"]) == ("unwrap", "error")
    assert unwrap["error"] == "KeyDisabledError"
    assert unwrap["key_id"] == "local:main/1"


def test_rewrap_records_the_unwrap_the_new_wrap_and_the_verification(tmp_path: Path) -> None:
    old, new = InMemoryKEK.generate("old"), InMemoryKEK.generate("new")
    blob = Engine(config=Config()).encrypt(b"x", [old], CONTEXT)
    log = tmp_path / "audit.jsonl"
    engine = Engine(config=audited(log), keys=[old])
    rewrap_bytes(engine, blob, RewrapPlan.of(add=[new]))
    got = [(e["operation"], e["key_id"], e["outcome"]) for e in events(log)]
    assert got == [
        ("unwrap", "memory:old", "ok"),
        ("wrap", "memory:new", "ok"),
        ("unwrap", "memory:new", "ok"),  # the new recipient, verified before it is written
    ]


def test_a_cached_data_key_makes_no_provider_call_and_no_event(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    kek = InMemoryKEK.generate("k")
    cache = DataKeyCache(max_age=60, max_messages=10)
    engine = Engine(config=audited(log), cache=cache)
    for _ in range(3):
        engine.encrypt(b"row", [kek], CONTEXT)
    assert [e["operation"] for e in events(log)] == ["wrap"]


# -- failing sinks ---------------------------------------------------------------------------


def test_a_failing_sink_fails_the_operation_naming_the_sink(tmp_path: Path) -> None:
    log = tmp_path / "no-such-dir" / "audit.jsonl"
    kek = InMemoryKEK.generate("k")
    with pytest.raises(AuditSinkError) as caught:
        Engine(config=audited(log)).encrypt(b"x", [kek])
    assert isinstance(caught.value, AuditLogError)
    assert caught.value.exit_code == 12
    message = str(caught.value)
    assert f"jsonl:{log}" in message
    assert "No such file or directory" in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_sink_path_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    log = tmp_path / "audit.jsonl"
    if kind == "symlink":
        target = tmp_path / "elsewhere.jsonl"
        target.write_text("")
        log.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(log)
    else:
        log.mkdir()
    with pytest.raises(AuditSinkError, match=r"regular file|symbolic link"):
        Engine(config=audited(log)).encrypt(b"x", [InMemoryKEK.generate("k")])
    if kind == "symlink":
        assert target.read_text() == ""  # never written through the link


class FailsOn:
    """A sink (the public ``Sink`` protocol) that fails for one operation and outcome."""

    name = "test-sink"

    def __init__(self, operation: str, outcome: str = "ok") -> None:
        self.operation, self.outcome = operation, outcome
        self.seen: list[AuditEvent] = []

    def emit(self, event: AuditEvent, line: str) -> None:
        self.seen.append(event)
        if (event.operation, event.outcome) == (self.operation, self.outcome):
            raise OSError(28, "No space left on device")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_an_unrecorded_unwrap_never_yields_the_data_key() -> None:
    kek = InMemoryKEK.generate("k")
    blob = Engine(config=Config()).encrypt(b"plaintext", [kek], CONTEXT)
    sink = FailsOn("unwrap")
    engine = Engine(config=Config(), keys=[kek], audit=AuditTrail([sink]))
    with pytest.raises(AuditSinkError, match="test-sink failed: No space left on device"):
        engine.decrypt(blob, CONTEXT)
    with pytest.raises(AuditSinkError):
        engine.unwrap_data_key(parse_header(blob, DEFAULT_LIMITS)[0])
    out = io.BytesIO()
    with pytest.raises(AuditSinkError):
        engine.decrypt_stream(io.BytesIO(blob), out, CONTEXT)
    assert out.getvalue() == b""
    assert [e.outcome for e in sink.seen] == ["ok", "ok", "ok"]  # the provider did unwrap


def test_an_unrecorded_failed_attempt_stops_the_search() -> None:
    """Recording a failed attempt fails: no further recipient is tried unrecorded."""
    good = InMemoryKEK.generate("good")
    blob = Engine(config=Config()).encrypt(b"x", [InMemoryKEK.generate("bad"), good], {})
    impostor = InMemoryKEK.generate("bad")  # tried first, fails to unwrap
    sink = FailsOn("unwrap", "error")
    engine = Engine(config=Config(), keys=[impostor, good], audit=AuditTrail([sink]))
    with pytest.raises(AuditSinkError):
        engine.decrypt(blob)
    assert [(e.key_id, e.outcome) for e in sink.seen] == [("memory:bad", "error")]
    assert Engine(config=Config(), keys=[impostor, good]).decrypt(blob) == b"x"  # without it


def test_an_unrecorded_wrap_makes_no_envelope() -> None:
    sink = FailsOn("wrap")
    engine = Engine(config=Config(), audit=AuditTrail([sink]))
    with pytest.raises(AuditSinkError, match="the wrap with memory:k did not complete"):
        engine.encrypt(b"x", [InMemoryKEK.generate("k")])


def test_best_effort_goes_on_and_warns_once_per_burst(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "later"
    log = folder / "audit.jsonl"
    kek = InMemoryKEK.generate("k")
    engine = Engine(config=audited(log, best_effort=True), keys=[kek])
    with caplog.at_level(logging.WARNING, logger="kmsenvelope.audit"):
        blob = engine.encrypt(b"x", [kek])
        assert engine.decrypt(blob) == b"x"
        engine.encrypt(b"y", [kek])
        failed = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failed) == 1  # one warning for a burst of three lost events
        assert f"jsonl:{log}" in failed[0].getMessage()
        folder.mkdir()
        engine.encrypt(b"z", [kek])
    recovered = [r for r in caplog.records if "works again;" in r.getMessage()]
    assert len(recovered) == 1
    assert "3 event(s) were lost" in recovered[0].getMessage()
    assert [e["operation"] for e in events(log)] == ["wrap"]


class Interrupted:
    """A KEK whose provider call is interrupted (Ctrl-C)."""

    key_id = "memory:slow"

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        raise KeyboardInterrupt

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        raise KeyboardInterrupt


def test_an_interrupted_call_is_recorded_and_stays_an_interruption() -> None:
    sink = FailsOn("wrap", "error")  # the record fails too: Ctrl-C must still win
    engine = Engine(config=Config(), audit=AuditTrail([sink]))
    with pytest.raises(KeyboardInterrupt):
        engine.encrypt(b"x", [Interrupted()])
    assert [(e.outcome, e.error) for e in sink.seen] == [("error", "KeyboardInterrupt")]


# -- the sinks themselves --------------------------------------------------------------------


def test_logging_sink_logs_json_and_the_fields(caplog: pytest.LogCaptureFixture) -> None:
    kek = InMemoryKEK.generate("k")
    engine = Engine(config=Config(audit=AuditSettings(sinks=("logging",))), keys=[kek])
    with caplog.at_level(logging.INFO, logger="kmsenvelope.audit"):
        engine.decrypt(engine.encrypt(b"x", [kek], CONTEXT), CONTEXT)
    records = [r for r in caplog.records if r.name == "kmsenvelope.audit"]
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    for record, operation in zip(records, ("wrap", "unwrap"), strict=True):
        assert json.loads(record.getMessage()) == record.audit  # type: ignore[attr-defined]
        assert record.audit["operation"] == operation  # type: ignore[attr-defined]
    assert isinstance(engine.audit.sinks[0], LoggingSink)


def test_record_for_the_daemon_carries_the_peer(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlSink(log, "always")])
    trail.record("unwrap", "local:k/1", "local", CONTEXT, error=KeyDisabledError("x"), peer=(7, 42))
    trail.record("wrap", "local:k/1", None, {}, peer=(7, 43))
    first, second = events(log)
    assert first["peer_uid"] == 7
    assert first["peer_pid"] == 42
    assert (first["outcome"], first["error"]) == ("error", "KeyDisabledError")
    assert (second["outcome"], second["provider"], second["peer_pid"]) == ("ok", "local", 43)
    with pytest.raises(ValueError, match="wrap"):
        trail.record("encrypt", "local:k", None, {})


def test_jsonl_sink_follows_a_rotated_file_and_ends_a_torn_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b'{"time": "torn')  # a writer killed mid-line
    trail = AuditTrail([JsonlSink(log, "always")])
    trail.record("wrap", "memory:k", None, {})
    lines = log.read_text().splitlines()
    assert lines[0] == '{"time": "torn'
    assert json.loads(lines[1])["key_id"] == "memory:k"
    log.rename(tmp_path / "audit.jsonl.1")  # logrotate
    trail.record("unwrap", "memory:k", None, {})
    assert [e["operation"] for e in events(log)] == ["unwrap"]
    assert len((tmp_path / "audit.jsonl.1").read_text().splitlines()) == 2


def test_batch_mode_writes_before_returning_and_flush_syncs(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    sink = JsonlSink(log, "batch")
    trail = AuditTrail([sink])
    for _ in range(5):
        trail.record("wrap", "memory:k", None, {})
        # written (in the kernel) before record returns: a killed process loses nothing
    assert len(events(log)) == 5
    trail.flush()
    sink.close()


def test_syslog_sink_formats_one_line_of_json() -> None:
    sink = SyslogSink("user")
    assert sink.name == "syslog:user"
    event = AuditEvent.of("wrap", "memory:k", None, CONTEXT, error="UnwrapError")
    line = event.to_json()
    assert "\n" not in line
    assert json.loads(line)["error"] == "UnwrapError"
    assert re.fullmatch(r"[\x20-\x7e]+", line)  # ASCII only, whatever the key id


def test_a_key_id_cannot_break_a_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlSink(log)])
    trail.record("wrap", "memory:a\nb\u202e", None, {})
    trail.flush()
    (event,) = events(log)
    assert event["key_id"] == "memory:a\nb\u202e"
