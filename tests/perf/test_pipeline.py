"""The parallel streaming pipeline: same bytes as a serial loop, authenticate-before-write,
errors from every thread, BytesIO read in place, bounded buffer pool (no timings)."""

from __future__ import annotations

import io
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsenvelope import AuthenticationError, pipeline
from kmsenvelope.format.chunks import TAG_SIZE, chunk_nonce
from kmsenvelope.pipeline import decrypt_payload, encrypt_payload

KEY = bytes(range(32))


def serial_reference(data: bytes, chunk: int) -> bytes:
    """The payload as docs/format.md section 7.1 defines it, one chunk at a time."""
    aead = AESGCM(KEY)
    if not data:
        return aead.encrypt(chunk_nonce(0, True), b"", None)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return b"".join(
        aead.encrypt(chunk_nonce(i, i == len(pieces) - 1), p, None) for i, p in enumerate(pieces)
    )


class Trickle(io.RawIOBase):
    """A non-seekable source that returns short reads of random sizes."""

    def __init__(self, data: bytes, seed: int = 1) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, view: memoryview) -> int:  # type: ignore[override]
        n = min(len(view), self.rng.randint(1, 300_000), len(self.data) - self.pos)
        view[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


class Recorder(io.RawIOBase):
    """A sink that records every write and the thread it came from."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.threads: set[str] = set()

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        data = bytes(b)  # type: ignore[call-overload]
        self.parts.append(data)
        self.threads.add(threading.current_thread().name)
        return len(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


@pytest.fixture(params=[0, 1, 2, 3])
def workers(request: pytest.FixtureRequest) -> int:
    """0: the calling thread encrypts between reads; 1..3: worker threads."""
    return int(request.param)


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 64 KiB so that small inputs cross many batch boundaries."""
    monkeypatch.setattr(pipeline, "BATCH_BYTES", 64 << 10)


SIZES = [0, 1, 15, 16, 1000, 65535, 65536, 65537, 3 * 65536, 3 * 65536 + 5, 1 << 20, 1234567]


@pytest.mark.parametrize("chunk", [16, 1000, 4096, 65536, 1 << 20])
def test_same_bytes_as_a_serial_loop(chunk: int, workers: int) -> None:
    rng = random.Random(chunk)
    for size in SIZES:
        if chunk == 16 and size > 200_000:
            continue
        data = rng.randbytes(size)
        expected = serial_reference(data, chunk)
        for source in (io.BytesIO(data), Trickle(data, size)):
            out = io.BytesIO()
            assert encrypt_payload(source, out, KEY, chunk, workers=workers) == size
            assert out.getvalue() == expected, (chunk, size)
        for source in (io.BytesIO(expected), Trickle(expected, size)):
            back = io.BytesIO()
            assert decrypt_payload(source, back, KEY, chunk, workers=workers) == size
            assert back.getvalue() == data, (chunk, size)


def test_bytesio_is_read_in_place_and_left_usable() -> None:
    data = os.urandom(500_000)
    src = io.BytesIO(b"prefix" + data)
    src.seek(6)
    out = io.BytesIO()
    encrypt_payload(src, out, KEY, 4096)
    assert src.tell() == 6 + len(data)
    src.write(b"more")  # no buffer export left behind
    assert src.getvalue().endswith(b"more")
    sealed = io.BytesIO(b"xx" + out.getvalue())
    sealed.seek(2)
    back = io.BytesIO()
    decrypt_payload(sealed, back, KEY, 4096)
    assert back.getvalue() == data
    assert sealed.tell() == len(sealed.getvalue())
    sealed.write(b"ok")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_tampering_writes_only_authenticated_batches(where: str, workers: int) -> None:
    chunk = 4096
    data = os.urandom(40 * chunk + 123)
    sealed = bytearray(serial_reference(data, chunk))
    block = chunk + TAG_SIZE
    index = {"first": 0, "middle": 20, "last": 40}[where]
    sealed[index * block + 5] ^= 1
    for source in (io.BytesIO(bytes(sealed)), Trickle(bytes(sealed))):
        out = Recorder()
        with pytest.raises(AuthenticationError):
            decrypt_payload(source, out, KEY, chunk, workers=workers)
        written = out.value()
        assert data.startswith(written)  # a prefix of the true plaintext, nothing else
        assert len(written) <= index * chunk  # nothing from the tampered chunk or after it


def test_batches_before_a_tampered_one_are_all_written(workers: int) -> None:
    """Whatever the threading, the output ends exactly at the last whole good batch."""
    chunk = 4096
    per_batch = pipeline.BATCH_BYTES // chunk
    data = os.urandom(5 * per_batch * chunk)
    sealed = bytearray(serial_reference(data, chunk))
    bad = 3 * per_batch + 2  # a chunk inside the fourth batch
    sealed[bad * (chunk + TAG_SIZE) + 9] ^= 1
    for _ in range(5):
        out = Recorder()
        with pytest.raises(AuthenticationError):
            decrypt_payload(Trickle(bytes(sealed)), out, KEY, chunk, workers=workers)
        assert out.value() == data[: 3 * per_batch * chunk]


def test_file_writes_end_on_page_boundaries(tmp_path: Path, workers: int) -> None:
    """After an odd-sized header, every write but the last ends on an ALIGN boundary of the
    file, and the bytes are still exactly the serial loop's."""

    class Boundaries(io.FileIO):
        def __init__(self, path: Path) -> None:
            super().__init__(path, "w")
            self.ends: list[int] = []

        def write(self, b: Any) -> int:
            n = super().write(b)
            self.ends.append(self.tell())
            return n or 0

    data = os.urandom(20 * 65536 + 777)
    for source in (io.BytesIO(data), Trickle(data)):
        path = tmp_path / "out"
        with Boundaries(path) as out:
            out.write(b"h" * 150)
            encrypt_payload(source, out, KEY, 4096, workers=workers)
        assert path.read_bytes() == b"h" * 150 + serial_reference(data, 4096)
        assert len(out.ends) > 10
        assert all(end % pipeline.ALIGN == 0 for end in out.ends[1:-1]), out.ends


def test_negative_workers_rejected() -> None:
    with pytest.raises(ValueError, match="workers"):
        encrypt_payload(Trickle(os.urandom(1 << 20)), io.BytesIO(), KEY, 4096, workers=-1)


def test_tampering_stops_reading_soon(workers: int) -> None:
    """A bad first chunk ends the stream within a few batches, not at the end of the input."""
    chunk = 4096
    data = os.urandom(400 * chunk)  # 25 batches of 64 KiB
    sealed = bytearray(serial_reference(data, chunk))
    sealed[5] ^= 1
    source = Trickle(bytes(sealed))
    with pytest.raises(AuthenticationError):
        decrypt_payload(source, Recorder(), KEY, chunk, workers=workers)
    batch = pipeline.BATCH_BYTES // chunk * (chunk + TAG_SIZE)
    assert source.pos <= (pipeline.SLOTS + 2) * batch < len(sealed) // 3


@pytest.mark.parametrize(
    "cut",
    [
        lambda n, block: n - 1,  # truncated final chunk
        lambda n, block: n - (n % block or block),  # dropped final chunk
        lambda n, block: n + 1,  # trailing byte
    ],
)
def test_truncation_and_trailing_data(cut: object, workers: int) -> None:
    chunk = 4096
    data = os.urandom(30 * chunk + 7)
    sealed = serial_reference(data, chunk)
    n = cut(len(sealed), chunk + TAG_SIZE)  # type: ignore[operator]
    bad = sealed[:n] if n <= len(sealed) else sealed + b"\x00"
    out = Recorder()
    with pytest.raises(AuthenticationError):
        decrypt_payload(io.BytesIO(bad), out, KEY, chunk, workers=workers)
    assert data.startswith(out.value())


def test_empty_payload_is_rejected() -> None:
    with pytest.raises(AuthenticationError):
        decrypt_payload(io.BytesIO(b""), io.BytesIO(), KEY, 4096)
    with pytest.raises(AuthenticationError):
        decrypt_payload(Trickle(b""), io.BytesIO(), KEY, 4096)


def test_writer_errors_reach_the_caller(workers: int) -> None:
    class Full(io.RawIOBase):
        def __init__(self) -> None:
            self.writes = 0

        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            self.writes += 1
            if self.writes == 3:
                raise OSError(28, "No space left on device")
            return len(b)  # type: ignore[arg-type]

    sink = Full()
    with pytest.raises(OSError, match="No space"):
        encrypt_payload(io.BytesIO(os.urandom(2 << 20)), sink, KEY, 4096, workers=workers)
    assert sink.writes == 3  # nothing written after the failure


def test_reader_errors_reach_the_caller() -> None:
    class Broken(Trickle):
        def readinto(self, view: memoryview) -> int:  # type: ignore[override]
            if self.pos > 300_000:
                raise OSError(5, "Input/output error")
            return super().readinto(view)

    with pytest.raises(OSError, match="Input/output"):
        encrypt_payload(Broken(os.urandom(1 << 20)), io.BytesIO(), KEY, 4096)
    assert not _pipeline_threads()


def test_progress_runs_on_the_calling_thread_and_adds_up(workers: int) -> None:
    calls: list[tuple[int, str]] = []

    def progress(n: int) -> None:
        calls.append((n, threading.current_thread().name))

    data = os.urandom(1_000_003)
    out = io.BytesIO()
    encrypt_payload(Trickle(data), out, KEY, 4096, progress, workers=workers)
    assert sum(n for n, _ in calls) == len(data)
    back = io.BytesIO()
    decrypt_payload(io.BytesIO(out.getvalue()), back, KEY, 4096, progress, workers=workers)
    assert sum(n for n, _ in calls) == 2 * len(data)
    assert {name for _, name in calls} == {threading.current_thread().name}


def test_large_streams_write_from_one_writer_thread_in_order() -> None:
    data = os.urandom(3 << 20)
    out = Recorder()
    encrypt_payload(io.BytesIO(data), out, KEY, 65536, workers=3)
    assert out.threads == {"kmsenvelope-writer"}
    assert out.value() == serial_reference(data, 65536)
    assert not _pipeline_threads()


def test_small_streams_start_no_thread() -> None:
    out = Recorder()
    encrypt_payload(Trickle(os.urandom(50_000)), out, KEY, 65536)
    assert out.threads == {threading.current_thread().name}


def test_buffer_pool_is_bounded_and_releasable() -> None:
    for _ in range(3):
        encrypt_payload(Trickle(os.urandom(1 << 20)), io.BytesIO(), KEY, 4096, workers=2)
    assert pipeline.BUFFERS._held <= pipeline.BUFFERS.limit
    pipeline.release_buffers()
    assert pipeline.BUFFERS._held == 0


def test_pooled_buffers_are_wiped_after_every_stream(tmp_path) -> None:
    """Plaintext must not linger in the buffer pool after a stream, successful or not."""
    marker = b"PLAINTEXT-MARKER" * (1 << 16)  # 1 MiB
    key = bytes(range(32))
    source = tmp_path / "plain"
    source.write_bytes(marker * 5)
    envelope = tmp_path / "payload"
    with source.open("rb") as src, envelope.open("wb") as dst:  # file source: pooled inbuf
        encrypt_payload(src, dst, key, 1 << 20)
    with envelope.open("rb") as src:  # decrypt: plaintext in pooled outbufs
        decrypt_payload(src, io.BytesIO(), key, 1 << 20)
    pooled = [bytes(b) for bufs in pipeline.BUFFERS._free.values() for b in bufs]
    assert pooled, "the pool should hold buffers for the next stream"
    assert not any(b"PLAINTEXT-MARKER" in b for b in pooled)


def _pipeline_threads() -> list[threading.Thread]:
    """Threads the payload pipeline started (the audit log's group-commit thread, which other
    tests of this process may have started, is not one of them)."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("kmsenvelope-") and t.name != "kmsenvelope-audit-sync"
    ]
