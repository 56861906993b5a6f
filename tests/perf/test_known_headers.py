"""The engine's fast paths for small messages (issue 17): a decrypt whose header layout was parsed
before reads only its nonce and wrapped key, and an encrypt to one KEK object with nothing to
record skips the general path. Neither may skip a check: every envelope the general path would
refuse is refused with the same error, every call is still recorded when a sink or tracer is
there, and a failing KEK leads to the same recipient-by-recipient report."""

from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Mapping

import pytest

from kmsenvelope import (
    AuthenticationError,
    Engine,
    MalformedEnvelopeError,
    NoRecipientError,
    ProviderError,
    ProviderRegistry,
    WrappedKey,
)
from kmsenvelope.auditing import AuditEvent, AuditTrail
from kmsenvelope.config import Config
from kmsenvelope.errors import UnwrapError
from kmsenvelope.format.header import DEFAULT_LIMITS, Limits, encode_new_header, new_header
from kmsenvelope.hazmat import parse_header
from kmsenvelope.known_headers import MAX_LAYOUTS, NONCE_END
from kmsenvelope.memory import InMemoryKEK


class Events:
    """An audit sink (the public ``Sink`` protocol) that keeps what it is given."""

    name = "memory:test"

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent, line: str) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class FlakyKEK:
    """An in-process KEK (the public protocol) that can be told to fail its next unwraps, to
    raise something that is not ours, or to return something that is not a WrappedKey."""

    def __init__(self, name: str = "flaky", key: bytes | None = None) -> None:
        self.inner = InMemoryKEK(key or os.urandom(32), name)
        self.key_id = self.inner.key_id
        self.fail_next = 0
        self.crash_next = 0
        self.bad_wrap = False
        self.unwraps = 0

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        if self.bad_wrap:
            return "not a wrapped key"  # type: ignore[return-value]
        return self.inner.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        self.unwraps += 1
        if self.fail_next:
            self.fail_next -= 1
            raise UnwrapError(f"{self.key_id}: said no (test)")
        if self.crash_next:
            self.crash_next -= 1
            raise RuntimeError("plugin bug (test)")
        return self.inner.unwrap(wrapped, context)


def engine(*keys: object, audit: AuditTrail | None = None) -> Engine:
    return Engine(
        registry=ProviderRegistry(),
        config=Config(),
        keys=list(keys),  # type: ignore[arg-type]
        audit=audit if audit is not None else AuditTrail(),
    )


def warm(e: Engine, kek: object, context: Mapping[str, str] | None = None) -> None:
    """One encrypt and decrypt through the general paths: the layout is learnt."""
    blob = e.encrypt(b"first", [kek], context)  # type: ignore[list-item]
    assert e.decrypt(blob) == b"first"
    assert e._known.last is not None  # the layout was learnt (else nothing below is tested)


# -- decrypt ----------------------------------------------------------------------------------


def outcome(e: Engine, blob: bytes) -> tuple[str, str]:
    """What decrypting ``blob`` gives: the plaintext, or the error's class and message."""
    try:
        return "ok", e.decrypt(blob).hex()
    except Exception as exc:
        return type(exc).__name__, str(exc)


def test_same_layout_decrypts_and_every_byte_change_fails_as_with_no_layout() -> None:
    kek = InMemoryKEK.generate("layout")
    e = engine(kek)
    context = {"tenant": "acme"}
    warm(e, kek, context)
    blob = e.encrypt(b"secret payload", [kek], context)
    assert e.decrypt(blob) == b"secret payload"
    assert e._known.find(blob, e.limits) is not None  # this blob takes the fast path
    assert e.decrypt(blob, {"tenant": "acme"}) == b"secret payload"
    with pytest.raises(AuthenticationError, match="context key 'tenant'"):
        e.decrypt(blob, {"tenant": "other"})
    for pos in range(len(blob)):  # every single-byte change: refused, as a fresh engine does
        for flip in (0x01, 0x80):
            bad = bytearray(blob)
            bad[pos] ^= flip
            fresh = engine(kek)  # knows no layout: parses every header
            expected = outcome(fresh, bytes(bad))
            assert expected[0] != "ok"
            assert outcome(e, bytes(bad)) == expected, pos


def test_truncated_and_extended_envelopes_of_a_known_layout() -> None:
    kek = InMemoryKEK.generate("trunc")
    e = engine(kek)
    warm(e, kek)
    blob = e.encrypt(b"x" * 100, [kek])
    header_size = parse_header(blob)[1]
    for cut in (header_size - 1, header_size - 32, NONCE_END + 3, header_size):
        with pytest.raises((MalformedEnvelopeError, AuthenticationError)):
            e.decrypt(blob[:cut])
    with pytest.raises(MalformedEnvelopeError, match="truncated"):
        e.decrypt(blob[: header_size - 1])
    with pytest.raises(AuthenticationError):
        e.decrypt(blob + b"\x00")
    with pytest.raises(AuthenticationError):
        e.decrypt(blob[:-1])


def test_the_layout_of_a_header_never_outlives_stricter_limits() -> None:
    kek = InMemoryKEK.generate("limits")
    e = engine(kek)
    context = {f"k{i}": "v" for i in range(5)}
    warm(e, kek, context)
    blob = e.encrypt(b"data", [kek], context)
    e.limits = Limits(max_context_entries=4)
    with pytest.raises(MalformedEnvelopeError, match="context"):
        e.decrypt(blob)
    e.limits = DEFAULT_LIMITS
    assert e.decrypt(blob) == b"data"


def test_layouts_are_per_engine_and_keys_bypass_them() -> None:
    own = InMemoryKEK.generate("own")
    stranger = InMemoryKEK(os.urandom(32), "own")  # same key id, another key
    reader = engine(own)
    warm(reader, own)
    other = engine(stranger)
    blob = reader.encrypt(b"for own", [own])
    with pytest.raises(NoRecipientError):
        other.decrypt(blob)  # the other engine learnt nothing from the first
    # keys= are tried first (the general path), then the engine's own: the stranger fails and
    # the engine's own key opens it.
    counting = FlakyKEK("own", os.urandom(32))
    assert reader.decrypt(blob, keys=[counting]) == b"for own"
    assert counting.unwraps == 1
    assert reader.decrypt(blob, keys=[own]) == b"for own"


def test_a_failing_own_kek_reports_as_the_general_path_does() -> None:
    key = os.urandom(32)
    first = FlakyKEK("dup", key)
    e = engine(first)
    warm(e, first)
    blob = e.encrypt(b"m", [first])
    first.fail_next = 1
    with pytest.raises(NoRecipientError) as caught:
        e.decrypt(blob)
    assert "said no (test)" in str(caught.value)
    first.crash_next = 1
    with pytest.raises(NoRecipientError) as caught:
        e.decrypt(blob)
    assert "RuntimeError" in str(caught.value)
    assert e.decrypt(blob) == b"m"
    # A second KEK of the same key id (the same key): when the first fails, the second opens.
    both = engine(first, InMemoryKEK(key, "dup"))
    warm(both, first)
    first.fail_next = 1
    before = first.unwraps
    assert both.decrypt(both.encrypt(b"again", [first])) == b"again"
    assert first.unwraps == before + 1  # the first was tried once, and failed


def test_every_unwrap_and_wrap_is_recorded_when_a_sink_is_there() -> None:
    kek = InMemoryKEK.generate("audited")
    sink = Events()
    e = engine(kek, audit=AuditTrail([sink]))
    warm(e, kek)
    sink.events.clear()
    for i in range(5):
        assert e.decrypt(e.encrypt(b"%d" % i, [kek])) == b"%d" % i
    assert [ev.operation for ev in sink.events] == ["wrap", "unwrap"] * 5
    assert all(ev.outcome == "ok" and ev.key_id == "memory:audited" for ev in sink.events)


def test_an_audit_subclass_that_records_in_call_is_never_skipped() -> None:
    calls: list[str] = []

    class Counting(AuditTrail):
        def call(self, operation, key_id, provider, context, peer=None):  # type: ignore[no-untyped-def]
            calls.append(operation)
            return super().call(operation, key_id, provider, context, peer)

    kek = InMemoryKEK.generate("sub")
    e = engine(kek, audit=Counting())
    warm(e, kek)
    calls.clear()
    assert e.decrypt(e.encrypt(b"m", [kek])) == b"m"
    assert calls == ["wrap", "unwrap"]


def test_opentelemetry_imported_later_turns_recording_back_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "opentelemetry.trace", raising=False)  # other tests import it
    trail = AuditTrail()
    assert trail.idle()
    assert not AuditTrail([Events()]).idle()
    assert not AuditTrail(tracer_provider=object()).idle()
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", types.ModuleType("opentelemetry.trace"))
    assert not trail.idle()  # then call() decides (a span if a tracer provider is set)


def test_layout_memo_is_bounded() -> None:
    kek = InMemoryKEK.generate("bound")
    e = engine(kek)
    for i in range(MAX_LAYOUTS * 3):
        context = {"n": str(i)}
        assert e.decrypt(e.encrypt(b"m", [kek], context)) == b"m"
        assert len(e._known._layouts) <= MAX_LAYOUTS


def test_concurrent_decrypts_of_many_layouts() -> None:
    kek = InMemoryKEK.generate("threads")
    e = engine(kek)
    blobs = [(e.encrypt(b"%d" % i, [kek], {"n": str(i % 7)}), b"%d" % i) for i in range(700)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for k in range(len(blobs)):
                blob, plain = blobs[(k * 13 + offset) % len(blobs)]
                assert e.decrypt(blob) == plain
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- encrypt ----------------------------------------------------------------------------------


def test_small_message_encrypt_fast_path_keeps_the_checks() -> None:
    kek = FlakyKEK("enc")
    e = engine(kek)
    warm(e, kek)
    kek.bad_wrap = True
    with pytest.raises(ProviderError, match="not WrappedKey"):
        e.encrypt(b"m", [kek])

    class Crashing(FlakyKEK):
        def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
            raise RuntimeError("plugin bug (test)")

    crashing = Crashing("crash")
    e2 = engine(crashing)
    e2.audit  # noqa: B018 - built, so that the fast path is taken
    with pytest.raises(ProviderError, match=r"wrap failed: .*RuntimeError"):
        e2.encrypt(b"m", [crashing])

    class Lying(FlakyKEK):
        def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
            w = self.inner.wrap(dek, context)
            return WrappedKey("aws-kms", w.key_id, w.algorithm, w.ciphertext)

    lying = Lying("lie")
    e3 = engine(lying)
    e3.audit  # noqa: B018
    with pytest.raises(ProviderError, match="does not start with its provider"):
        e3.encrypt(b"m", [lying])


def test_config_context_is_bound_by_the_fast_path() -> None:
    kek = InMemoryKEK.generate("cfgctx")
    e = Engine(
        registry=ProviderRegistry(),
        config=Config(context={"app": "billing"}),
        keys=[kek],
        audit=AuditTrail(),
    )
    warm(e, kek)
    blob = e.encrypt(b"m", [kek])
    assert dict(parse_header(blob)[0].context) == {"app": "billing"}
    assert e.decrypt(blob, {"app": "billing"}) == b"m"
    assert dict(parse_header(e.encrypt(b"m", [kek], {}))[0].context) == {}


def test_fast_and_general_encrypt_write_the_same_format() -> None:
    kek = InMemoryKEK.generate("same")
    e = engine(kek)
    warm(e, kek)
    for size in (0, 1, 1024, 1 << 20):
        data = os.urandom(size)
        blob = e.encrypt(data, [kek])  # fast path
        general = e.encrypt(data, [kek], chunk_size=1 << 20)  # general path, same settings
        assert len(blob) == len(general)
        h1, n1 = parse_header(blob)
        h2, n2 = parse_header(general)
        assert n1 == n2
        assert h1.chunk_size == h2.chunk_size
        assert h1.context == h2.context
        assert e.decrypt(blob) == data
        assert Engine(registry=ProviderRegistry(), config=Config(), keys=[kek]).decrypt(blob) == (
            data
        )


def test_empty_context_header_memo_matches_the_writer() -> None:
    for length in (44, 60, 200):
        for chunk in (16, 1 << 20):
            w = WrappedKey("memory", "memory:memo", "AES-256-GCM", os.urandom(length))
            nonce = os.urandom(16)
            first = encode_new_header(chunk, nonce, {}, [w])
            again = encode_new_header(chunk, nonce, {}, [w])  # from the memo
            expected = new_header(chunk, nonce, {}, [w]).authenticated_bytes()
            assert first == again == expected
    w = WrappedKey("memory", "memory:memo", "AES-256-GCM", os.urandom(60))
    with pytest.raises(ValueError, match="chunk_size"):
        encode_new_header(float(1 << 20), os.urandom(16), {}, [w])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", [{"tenant": 7}, {"": "empty key"}, {3: "int key"}, ["not", "a", "mapping"]]
)
def test_the_encrypt_fast_path_checks_the_callers_context_as_the_general_path(bad: object) -> None:
    kek = InMemoryKEK.generate("ctxcheck")
    warmed = engine(kek)
    warm(warmed, kek)  # the next encrypt to [kek] takes the fast path
    fresh = Engine(registry=ProviderRegistry(), config=Config(), keys=[kek])  # general path
    with pytest.raises((TypeError, ValueError)) as general:
        fresh.encrypt(b"m", [kek], bad)  # type: ignore[arg-type]
    with pytest.raises(type(general.value)) as fast:
        warmed.encrypt(b"m", [kek], bad)  # type: ignore[arg-type]
    assert str(fast.value) == str(general.value)
