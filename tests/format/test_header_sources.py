"""One header parser for every source: bytes, bytearray, memoryview and streams (including
streams that return one byte per read) give the same header, or the same error, for every
vector and every truncation of it, and a stream is left at the first payload byte."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from kmsenvelope.errors import MalformedEnvelopeError
from kmsenvelope.format.header import parse_header, read_header

VECTORS = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "v1.json").read_text(encoding="utf-8")
)["vectors"]
BINARY = [v for v in VECTORS if v["envelope"]]


class OneByteAtATime(io.RawIOBase):
    """A raw stream (a pipe, a socket) that returns a single byte per read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, view: Any) -> int:
        n = min(1, len(view), len(self.data) - self.pos)
        view[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def outcome(parse: Any, source: Any) -> tuple[Any, ...]:
    try:
        header, size = parse(source)
    except MalformedEnvelopeError as exc:
        return ("malformed", str(exc))
    return ("ok", repr(header), header.raw, header.mac, size)


def outcomes(data: bytes) -> dict[str, tuple[Any, ...]]:
    """The outcome of parsing ``data`` from each kind of source."""
    results = {
        "bytes": outcome(parse_header, data),
        "bytearray": outcome(parse_header, bytearray(data)),
        "memoryview": outcome(parse_header, memoryview(data)),
    }
    for name, stream in (
        ("BytesIO", io.BytesIO(data)),
        ("one byte per read", OneByteAtATime(data)),
        ("buffered", io.BufferedReader(OneByteAtATime(data), 7)),
    ):
        results[name] = outcome(read_header, stream)
        if results[name][0] == "ok":
            rest = stream.read()
            assert rest == data[results[name][-1] :], name  # left at the first payload byte
    return results


@pytest.mark.parametrize("vec", BINARY, ids=[v["name"] for v in BINARY])
def test_every_source_agrees_on_every_truncation(vec: dict[str, Any]) -> None:
    envelope = bytes.fromhex(vec["envelope"])
    whole = outcomes(envelope)
    size = whole["bytes"][-1] if whole["bytes"][0] == "ok" else len(envelope)
    # Every cut through the prefix and the first fields, then a sample through the rest.
    cuts = {*range(min(size, 64)), *range(64, size, max(1, size // 40)), size - 1, size}
    for cut in sorted(cuts | {size + 1, len(envelope)}):
        seen = outcomes(envelope[:cut])
        assert len(set(seen.values())) == 1, (cut, seen)
        if cut < size and whole["bytes"][0] == "ok":
            assert seen["bytes"][0] == "malformed", cut


def test_a_stream_with_short_reads_gives_the_whole_header() -> None:
    envelope = bytes.fromhex(next(v for v in BINARY if v["expected"] == "ok")["envelope"])
    header, size = parse_header(envelope)
    streamed, streamed_size = read_header(OneByteAtATime(envelope))  # type: ignore[arg-type]
    assert (streamed, streamed_size) == (header, size)
    assert streamed.raw == envelope[: size - 32]
    assert streamed.mac == envelope[size - 32 : size]
