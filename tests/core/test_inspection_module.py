"""Inspection lives in its own module; the old import path keeps working and the JSON is the
same."""

from __future__ import annotations

import io

import kmsenvelope
from kmsenvelope.memory import InMemoryKEK


def test_inspection_is_its_own_module_and_the_engine_path_still_imports() -> None:
    from kmsenvelope import engine, inspection

    assert engine.EnvelopeInfo is inspection.EnvelopeInfo
    assert engine.inspect_envelope is inspection.inspect_envelope
    assert kmsenvelope.EnvelopeInfo is inspection.EnvelopeInfo


def test_to_json_fields_and_order() -> None:
    kek = InMemoryKEK.generate("inspect-me")
    blob = kmsenvelope.Engine(keys=[kek]).encrypt(
        b"x" * 100, [kek], {"app": "a"}, chunk_size=64, armor=True
    )
    from kmsenvelope.inspection import inspect_envelope

    for source in (blob, io.BytesIO(blob)):
        doc = inspect_envelope(source).to_json()
        assert list(doc) == [
            "format_version",
            "encoding",
            "chunk_size",
            "header_size",
            "payload_length",
            "context",
            "recipients",
        ]
        assert doc["encoding"] == "compact"
        assert doc["chunk_size"] == 64
        assert doc["payload_length"] == 100
        assert doc["context"] == {"app": "a"}
        (recipient,) = doc["recipients"]
        assert list(recipient) == ["provider", "key_id", "algorithm", "params", "wrapped_key_size"]
        assert recipient["key_id"] == "memory:inspect-me"
        assert recipient["provider"] == "memory"
        assert isinstance(recipient["wrapped_key_size"], int)
