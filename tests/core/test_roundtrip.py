"""Round trips through the public API: sizes around chunk boundaries, both encodings, streams."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kmsenvelope
from kmsenvelope import Engine, ProviderRegistry
from kmsenvelope.config import Config
from kmsenvelope.memory import InMemoryKEK

CHUNK = 64
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5 * CHUNK + 7]
KEK = InMemoryKEK.generate("roundtrip")


def engine() -> Engine:
    return Engine(registry=ProviderRegistry(), config=Config(), keys=[KEK])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("armor", [False, True])
def test_round_trip_sizes(size: int, armor: bool) -> None:
    data = os.urandom(size)
    blob = engine().encrypt(data, [KEK], {"k": "v"}, armor=armor, chunk_size=CHUNK)
    assert blob.startswith(b"kmsenv1." if armor else b"KMSENV\x01")
    assert engine().decrypt(blob) == data
    assert engine().decrypt(blob, {"k": "v"}) == data
    info = engine().inspect(blob)
    assert info.payload_length == size
    assert info.chunk_size == CHUNK


@pytest.mark.parametrize("size", SIZES)
def test_stream_round_trip_sizes(size: int) -> None:
    data = os.urandom(size)
    enc = io.BytesIO()
    assert engine().encrypt_stream(io.BytesIO(data), enc, [KEK], chunk_size=CHUNK) == size
    out = io.BytesIO()
    assert engine().decrypt_stream(io.BytesIO(enc.getvalue()), out) == size
    assert out.getvalue() == data


def test_default_chunk_size_multi_chunk() -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    blob = engine().encrypt(data, [KEK])
    assert engine().inspect(blob).chunk_size == 1 << 20
    assert engine().decrypt(blob) == data


def test_compact_accepts_str_and_whitespace() -> None:
    blob = engine().encrypt(b"hello", [KEK], armor=True).decode()
    wrapped = "\n".join(blob[i : i + 60] for i in range(0, len(blob), 60)) + "\n"
    assert engine().decrypt(wrapped) == b"hello"
    assert engine().decrypt(blob) == b"hello"


def test_compact_stream_round_trip() -> None:
    data = os.urandom(10 * CHUNK + 3)
    enc = io.BytesIO()
    engine().encrypt_stream(io.BytesIO(data), enc, [KEK], armor=True, chunk_size=CHUNK)
    assert enc.getvalue().isascii()
    out = io.BytesIO()
    engine().decrypt_stream(io.BytesIO(enc.getvalue()), out)
    assert out.getvalue() == data


def test_payload_is_independent_of_recipients() -> None:
    """Same DEK and nonce, different recipients: identical payload bytes (re-wrap property)."""
    from kmsenvelope import hazmat

    other = InMemoryKEK.generate("other")
    dek, nonce = os.urandom(32), os.urandom(16)
    data = os.urandom(300)
    one = hazmat.seal(data, [KEK.wrap(dek, {})], {}, dek=dek, nonce=nonce, chunk_size=CHUNK)
    two = hazmat.seal(
        data, [KEK.wrap(dek, {}), other.wrap(dek, {})], {}, dek=dek, nonce=nonce, chunk_size=CHUNK
    )
    _, size_one = hazmat.parse_header(one)
    _, size_two = hazmat.parse_header(two)
    assert one[size_one:] == two[size_two:]


def test_module_functions_use_local_keystore(keystore: object) -> None:
    kmsenvelope.local.Keystore.open  # noqa: B018 - the module is importable
    assert isinstance(keystore, kmsenvelope.local.Keystore)
    keystore.create_key("api")
    blob = kmsenvelope.encrypt(b"data", ["local:api"], {"a": "b"})
    assert kmsenvelope.inspect_envelope(blob).recipients[0].key_id == "local:api/1"
    assert kmsenvelope.decrypt(blob, {"a": "b"}) == b"data"
    src, dst, back = io.BytesIO(b"x" * 5000), io.BytesIO(), io.BytesIO()
    kmsenvelope.encrypt_stream(src, dst, ["local:api"])
    kmsenvelope.decrypt_stream(io.BytesIO(dst.getvalue()), back)
    assert back.getvalue() == b"x" * 5000


def test_default_recipients_from_config(keystore: object, monkeypatch: pytest.MonkeyPatch) -> None:
    keystore.create_key("dflt")  # type: ignore[attr-defined]
    monkeypatch.setenv("KMSENVELOPE_RECIPIENTS", "local:dflt")
    blob = kmsenvelope.encrypt(b"data")
    assert kmsenvelope.inspect_envelope(blob).recipients[0].key_id == "local:dflt/1"


def test_no_recipients_is_a_config_error() -> None:
    with pytest.raises(kmsenvelope.ConfigError, match="no recipients"):
        engine().encrypt(b"x")
    with pytest.raises(kmsenvelope.ConfigError):
        engine().encrypt(b"x", [])
    with pytest.raises(TypeError):
        engine().encrypt(b"x", "local:oops")


def test_invalid_context_rejected() -> None:
    with pytest.raises(TypeError):
        engine().encrypt(b"x", [KEK], {"k": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        engine().encrypt(b"x", [KEK], {"": "v"})


@pytest.mark.parametrize("chunk_size", [0, 15, (1 << 24) + 1])
def test_invalid_chunk_size_rejected(chunk_size: int) -> None:
    with pytest.raises(ValueError):
        engine().encrypt(b"x", [KEK], chunk_size=chunk_size)


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=700),
    chunk=st.integers(min_value=16, max_value=200),
    context=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4),
    armor=st.booleans(),
)
def test_round_trip_property(data: bytes, chunk: int, context: dict[str, str], armor: bool) -> None:
    blob = engine().encrypt(data, [KEK], context, armor=armor, chunk_size=chunk)
    assert engine().decrypt(blob, context) == data
    assert dict(engine().inspect(blob).context) == context


def test_writer_refuses_what_readers_reject() -> None:
    """Writers never produce an envelope their own reader would refuse."""
    with pytest.raises(ValueError, match="256 entries"):
        engine().encrypt(b"x", [KEK], {f"k{i}": "v" for i in range(257)})
    assert engine().decrypt(engine().encrypt(b"x", [KEK], {f"k{i}": "v" for i in range(256)}))
    with pytest.raises(ValueError, match="exceed"):
        engine().encrypt(b"x", [KEK], {f"k{i}": "v" * 60000 for i in range(20)})


def test_compact_prefix_must_be_contiguous() -> None:
    from kmsenvelope import MalformedEnvelopeError

    blob = engine().encrypt(b"hello", [KEK], armor=True).decode()
    assert engine().decrypt("  \n" + blob) == b"hello"
    with pytest.raises(MalformedEnvelopeError):
        engine().decrypt("kms env1." + blob[len("kmsenv1.") :])
