"""Untrusted input: whatever the bytes, only the library's own errors come out."""

from __future__ import annotations

import contextlib
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsenvelope import Engine, KmsEnvelopeError, ProviderRegistry
from kmsenvelope.config import Config
from kmsenvelope.memory import InMemoryKEK

KEK = InMemoryKEK.generate("fuzz")
ENGINE = Engine(registry=ProviderRegistry(), config=Config(), keys=[KEK])
VALID = ENGINE.encrypt(b"some plaintext " * 10, [KEK], {"a": "b"}, chunk_size=32)
VALID_COMPACT = ENGINE.encrypt(b"some plaintext", [KEK], {"a": "b"}, armor=True)


def only_library_errors(raw: bytes) -> None:
    for attempt in (
        lambda: ENGINE.decrypt(raw),
        lambda: ENGINE.inspect(raw),
        lambda: ENGINE.inspect(io.BytesIO(raw)),
        lambda: ENGINE.decrypt_stream(io.BytesIO(raw), io.BytesIO()),
    ):
        with contextlib.suppress(KmsEnvelopeError):
            attempt()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    only_library_errors(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_after_magic(raw: bytes) -> None:
    only_library_errors(b"KMSENV\x01" + raw)
    only_library_errors(b"kmsenv1." + raw)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_envelope(data: st.DataObject) -> None:
    source = data.draw(st.sampled_from([VALID, VALID_COMPACT]))
    raw = bytearray(source)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 40))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=20))
    only_library_errors(bytes(raw))
    if bytes(raw) != source:
        try:
            out = ENGINE.decrypt(bytes(raw))
        except KmsEnvelopeError:
            return
        # Whitespace inserted in a compact envelope is legitimately ignored.
        assert out == ENGINE.decrypt(source)
