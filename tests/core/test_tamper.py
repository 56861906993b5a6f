"""Every tampering of an envelope fails with the documented error and releases no plaintext."""

from __future__ import annotations

import io
import os

import pytest

from kmsenvelope import (
    AuthenticationError,
    DecryptionError,
    Engine,
    KmsEnvelopeError,
    MalformedEnvelopeError,
    NoRecipientError,
    ProviderRegistry,
    hazmat,
)
from kmsenvelope.config import Config
from kmsenvelope.memory import InMemoryKEK

CHUNK = 32
TAG = 16
KEK = InMemoryKEK.generate("tamper")
DATA = bytes(range(100))  # 4 chunks of 32: 32+32+32+4
CONTEXT = {"purpose": "tamper-test"}


def engine(*keys: InMemoryKEK) -> Engine:
    return Engine(registry=ProviderRegistry(), config=Config(), keys=keys or [KEK])


@pytest.fixture(scope="module")
def blob() -> bytes:
    return engine().encrypt(DATA, [KEK], CONTEXT, chunk_size=CHUNK)


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    _, size = hazmat.parse_header(blob)
    payload = blob[size:]
    block = CHUNK + TAG
    return blob[:size], [payload[i : i + block] for i in range(0, len(payload), block)]


def assert_rejected(
    blob: bytes, error: type[Exception] = DecryptionError, plaintext: bytes = DATA
) -> None:
    """Both the in-memory and the streaming decrypt fail; the stream wrote only whole chunks."""
    with pytest.raises(error):
        engine().decrypt(blob, CONTEXT)
    out = io.BytesIO()
    with pytest.raises(error):
        engine().decrypt_stream(io.BytesIO(blob), out, CONTEXT)
    written = out.getvalue()
    assert plaintext.startswith(written)  # only authenticated chunks, never altered bytes
    assert len(written) % CHUNK == 0


def test_every_single_byte_flip_fails(blob: bytes) -> None:
    header, _ = split(blob)
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        expected = DecryptionError
        if index >= len(header):
            expected = AuthenticationError  # payload bytes: the chunk fails authentication
        try:
            assert_rejected(bytes(tampered), expected)
        except AssertionError as exc:
            raise AssertionError(f"flipping byte {index} was not rejected properly") from exc


def test_truncation_at_every_chunk_boundary(blob: bytes) -> None:
    header, chunks = split(blob)
    assert len(chunks) == 4
    for keep in range(len(chunks)):
        truncated = header + b"".join(chunks[:keep])
        assert_rejected(truncated, AuthenticationError)


def test_truncation_at_every_byte(blob: bytes) -> None:
    for end in range(len(blob)):
        assert_rejected(blob[:end])


def test_reordered_chunks(blob: bytes) -> None:
    header, chunks = split(blob)
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    assert_rejected(header + b"".join(swapped), AuthenticationError)
    last_moved = [*chunks[:2], chunks[3], chunks[2]]
    assert_rejected(header + b"".join(last_moved), AuthenticationError)


def test_duplicated_chunks(blob: bytes) -> None:
    header, chunks = split(blob)
    assert_rejected(header + b"".join([chunks[0], *chunks]), AuthenticationError)
    assert_rejected(header + b"".join([*chunks, chunks[-1]]), AuthenticationError)


def test_trailing_garbage_and_empty_final_chunk(blob: bytes) -> None:
    assert_rejected(blob + b"\x00", AuthenticationError)
    full = engine().encrypt(bytes(64), [KEK], CONTEXT, chunk_size=CHUNK)
    _, chunks = split(full)
    assert len(chunks) == 2  # exactly two full chunks, the second marked last
    assert_rejected(full + os.urandom(TAG), AuthenticationError, bytes(64))


def test_splicing_payload_from_another_envelope(blob: bytes) -> None:
    other = engine().encrypt(DATA, [KEK], CONTEXT, chunk_size=CHUNK)
    header, _ = split(blob)
    _, chunks = split(other)
    assert_rejected(header + b"".join(chunks), AuthenticationError)


def test_changed_context_in_header(blob: bytes) -> None:
    tampered = blob.replace(b"tamper-test", b"tamper-tesu")
    assert tampered != blob
    with pytest.raises(DecryptionError):
        engine().decrypt(tampered)


def test_caller_context_mismatch(blob: bytes) -> None:
    with pytest.raises(AuthenticationError, match="purpose"):
        engine().decrypt(blob, {"purpose": "other"})
    with pytest.raises(AuthenticationError):
        engine().decrypt(blob, {"missing": "x"})
    assert engine().decrypt(blob, {}) == DATA


def test_other_key_fails_and_says_why(blob: bytes) -> None:
    impostor = InMemoryKEK(os.urandom(32), "tamper")  # same id, different key
    with pytest.raises(NoRecipientError) as info:
        engine(impostor).decrypt(blob)
    assert info.value.attempts[0].key_id == "memory:tamper"
    assert "did not authenticate" in info.value.attempts[0].reason


def test_wrong_dek_fails_mac(blob: bytes) -> None:
    with pytest.raises(AuthenticationError):
        hazmat.open_with_dek(blob, os.urandom(32))


def test_swapped_recipient_from_another_envelope_fails_mac(blob: bytes) -> None:
    """A wrapped key lifted from another envelope unwraps to a DEK the MAC rejects."""
    other = engine().encrypt(b"other", [KEK], CONTEXT, chunk_size=CHUNK)
    h1, _ = hazmat.parse_header(blob)
    h2, _ = hazmat.parse_header(other)
    w1, w2 = h1.recipients[0].ciphertext, h2.recipients[0].ciphertext
    assert len(w1) == len(w2)
    with pytest.raises(AuthenticationError):
        engine().decrypt(blob.replace(w1, w2), CONTEXT)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"KMS",
        b"hello world",
        b"KMSENV\x02" + bytes(40),
        b"KMSENV\x01\xff\xff\xff\xff",
        b"kmsenv1.!!!!",
        b"kmsenv1.A",
    ],
)
def test_not_an_envelope(raw: bytes) -> None:
    with pytest.raises(MalformedEnvelopeError):
        engine().decrypt(raw)
    with pytest.raises(MalformedEnvelopeError):
        engine().inspect(raw)


def test_unsupported_version_message() -> None:
    with pytest.raises(MalformedEnvelopeError, match="version 2"):
        engine().decrypt(b"KMSENV\x02" + bytes(40))


def test_header_length_over_limit_rejected_before_allocation() -> None:
    raw = b"KMSENV\x01" + (1 << 31).to_bytes(4, "big")
    with pytest.raises(MalformedEnvelopeError, match="limit"):
        engine().inspect(raw)


def test_library_errors_share_one_base(blob: bytes) -> None:
    for exc in (AuthenticationError, MalformedEnvelopeError, NoRecipientError):
        assert issubclass(exc, KmsEnvelopeError)
        assert issubclass(exc, DecryptionError)
