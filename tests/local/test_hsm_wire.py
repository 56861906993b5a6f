"""The HSM daemon's wire protocol (kmsenvelope.local.wire) as hostile input: whatever the bytes,
the decoders raise only ``ProtocolError``, allocate nothing a length field merely announces, and
every valid message of every operation survives a round trip unchanged."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDisabledError,
    KmsEnvelopeError,
    ProviderError,
    ProviderUnavailableError,
    ThrottledError,
    UnwrapError,
    WrongPassphraseError,
)
from kmsenvelope.format.header import DEFAULT_LIMITS, encode_context, validate_context
from kmsenvelope.kek import WrappedKey
from kmsenvelope.local import wire
from kmsenvelope.local.wire import (
    MAX_BACKUP,
    MAX_BLOB,
    MAX_CONTEXT_ENTRIES,
    MAX_MESSAGE,
    MAX_REQUEST,
    MAX_RESPONSE,
    MAX_STRING,
    MAX_VALUE,
    VERSION,
    Op,
    ProtocolError,
    Request,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_response,
    frame_length,
    response_id,
)

HEAD = struct.Struct(">BBI")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
DEK = bytes(range(32))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- raw building blocks, written independently of wire.py's encoder -------------------------


def s(text: str | bytes) -> bytes:
    """A ``str`` field: u16 length + bytes (not validated: tests build bad ones on purpose)."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return U16.pack(len(raw)) + raw


def b(raw: bytes) -> bytes:
    """A ``bytes`` field: u32 length + bytes."""
    return U32.pack(len(raw)) + raw


def m(pairs: list[tuple[str | bytes, str | bytes]]) -> bytes:
    """A ``map`` field from (key, value) pairs, duplicates allowed."""
    return U16.pack(len(pairs)) + b"".join(s(k) + s(v) for k, v in pairs)


def request_body(op: int, fields: bytes, *, version: int = VERSION, request_id: int = 7) -> bytes:
    return HEAD.pack(version, op, request_id) + fields


def wrapped_fields(ciphertext: bytes = b"c" * 60, params: bytes = m([])) -> bytes:
    return s("local") + s("local:k/1") + s("AES-256-GCM") + b(ciphertext) + params


def wrap_body(
    dek: bytes = DEK, context: bytes = m([("a", "b")]), uri: bytes = s("local:k")
) -> bytes:
    return request_body(Op.WRAP, uri + b(dek) + context)


def unwrap_body(wrapped: bytes | None = None, context: bytes = m([])) -> bytes:
    return request_body(Op.UNWRAP, s("local:k") + (wrapped or wrapped_fields()) + context)


def response_body(fields: bytes, *, status: int = 0, request_id: int = 7) -> bytes:
    return HEAD.pack(VERSION, status, request_id) + fields


# -- strategies -------------------------------------------------------------------------------

CHARS = st.characters(codec="utf-8", exclude_characters="\x00")  # no lone surrogates, no NUL
names = st.text(CHARS, min_size=1, max_size=24)
values = st.text(CHARS, max_size=24)
contexts = st.dictionaries(names, values, max_size=6)
u32s = st.integers(0, 0xFFFFFFFF)
wrapped_keys = st.builds(
    WrappedKey,
    names,
    names,
    names,
    st.binary(max_size=120),
    st.dictionaries(names, values, max_size=4),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def args_for(op: Op) -> st.SearchStrategy[tuple[Any, ...]]:
    """Valid request fields for ``op``, in the table's order."""
    if op == Op.WRAP:
        return st.tuples(names, st.binary(min_size=32, max_size=32), contexts)
    if op == Op.UNWRAP:
        return st.tuples(names, wrapped_keys, contexts)
    if op == Op.LIST:
        return st.just(())
    if op == Op.CREATE:
        return st.tuples(names, names)
    if op == Op.DESTROY:
        return st.tuples(names, u32s)
    return st.tuples(names)


def value_for(op: Op) -> st.SearchStrategy[Any]:
    """A valid success value answering ``op``."""
    if op == Op.WRAP:
        return wrapped_keys
    if op == Op.UNWRAP:
        return st.binary(min_size=32, max_size=32)
    if op == Op.BACKUP:
        return st.binary(max_size=300)
    return json_values


requests = st.sampled_from(list(Op)).flatmap(lambda op: st.tuples(st.just(op), u32s, args_for(op)))


def only_protocol_errors(body: bytes) -> None:
    """Every decoder on ``body`` either succeeds or raises ProtocolError (nothing else)."""
    try:
        request = decode_request(body)
    except ProtocolError:
        pass
    else:  # the decoder accepted it: it must be exactly what the encoder writes for it
        assert encode_request(request.op, request.request_id, *request.args)[4:] == body
    for op in Op:
        try:
            response = decode_response(body, op)
        except ProtocolError:
            continue
        if response.error is None and op in (Op.WRAP, Op.UNWRAP, Op.BACKUP):
            again = encode_response(Request(op, response.request_id, ()), response.value)
            assert again[4:] == body
    with contextlib.suppress(ProtocolError):
        response_id(body)


def _valid_frames() -> list[bytes]:
    """Frames (without prefix) of every request and response shape, as mutation seeds."""
    wrapped = WrappedKey("local", "local:k/3", "AES-256-GCM", b"\x01" * 60, {"iv": "x", "p": ""})
    ctx = {"tenant": "acme", "purpose": "ünïcödé", "empty": ""}
    reqs: list[tuple[Op, tuple[Any, ...]]] = [
        (Op.WRAP, ("local:k", DEK, ctx)),
        (Op.UNWRAP, ("local:k", wrapped, ctx)),
        (Op.INFO, ("k",)),
        (Op.LIST, ()),
        (Op.CREATE, ("k", "aes256")),
        (Op.ROTATE, ("k",)),
        (Op.ENABLE, ("k",)),
        (Op.DISABLE, ("k",)),
        (Op.DESTROY, ("k", 3)),
        (Op.BACKUP, ("backup passphrase",)),
    ]
    out = [encode_request(op, 1000 + op, *args)[4:] for op, args in reqs]
    answers: list[tuple[Op, Any]] = [
        (Op.WRAP, wrapped),
        (Op.UNWRAP, DEK),
        (Op.BACKUP, b"backup" * 20),
        (Op.INFO, {"name": "k", "versions": [{"version": 1, "state": "enabled"}]}),
        (Op.LIST, [{"name": "k"}, {"name": "j"}]),
    ]
    out += [encode_response(Request(op, 77, ()), value)[4:] for op, value in answers]
    out.append(error_response(5, AccessDeniedError("uid 1 is not allowed"))[4:])
    return out


VALID = _valid_frames()


# -- fuzzing ----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_protocol_errors(raw: bytes) -> None:
    only_protocol_errors(raw)


@FUZZ
@given(st.integers(0, 255), st.integers(0, 255), u32s, st.binary(max_size=300))
def test_random_fields_after_a_header_raise_only_protocol_errors(
    version: int, code: int, request_id: int, rest: bytes
) -> None:
    only_protocol_errors(HEAD.pack(version, code, request_id) + rest)
    only_protocol_errors(HEAD.pack(VERSION, code % 12, request_id) + rest)


@FUZZ
@given(st.data())
def test_mutated_valid_frames_raise_only_protocol_errors(data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(VALID)))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "truncate", "insert", "extend", "huge"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 40))]
        elif action == "truncate":
            del raw[pos:]
        elif action == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=20))
        elif action == "extend":
            raw += data.draw(st.binary(min_size=1, max_size=40))
        else:  # a length or count field (or anything) claims far more than is there
            width = data.draw(st.sampled_from([2, 4]))
            big = data.draw(st.sampled_from([0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, MAX_BLOB + 1]))
            raw[pos : pos + width] = (big & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
    only_protocol_errors(bytes(raw))


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_every_truncation_and_extension_is_refused(body: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(body) - 1))
    only_protocol_errors(body[:cut])
    for decode in _decoders_accepting(body):
        with pytest.raises(ProtocolError):
            decode(body[:cut])
        with pytest.raises(ProtocolError, match="after its last field"):
            decode(body + data.draw(st.binary(min_size=1, max_size=8)))


def _decoders_accepting(body: bytes) -> list[Callable[[bytes], Any]]:
    """The decoders that accept ``body`` as it is (a request's, or the responses' for some ops)."""
    out: list[Callable[[bytes], Any]] = []
    candidates: list[Callable[[bytes], Any]] = [decode_request]
    candidates += [lambda raw, op=op: decode_response(raw, op) for op in Op]  # type: ignore[misc]
    for decode in candidates:
        try:
            decode(body)
        except ProtocolError:
            continue
        out.append(decode)
    return out


def _every_length_field(body: bytes) -> list[tuple[int, int]]:
    """(offset, width) of each length/count field in a valid ``body`` of VALID (by parsing it)."""
    op = body[1]
    fields: list[tuple[int, int]] = []
    pos = HEAD.size

    def text() -> None:
        nonlocal pos
        fields.append((pos, 2))
        pos += 2 + U16.unpack_from(body, pos)[0]

    def blob() -> None:
        nonlocal pos
        fields.append((pos, 4))
        pos += 4 + U32.unpack_from(body, pos)[0]

    def mapping() -> None:
        nonlocal pos
        fields.append((pos, 2))
        count = U16.unpack_from(body, pos)[0]
        pos += 2
        for _ in range(count * 2):
            text()

    readers = {
        Op.WRAP: (text, blob, mapping),
        Op.UNWRAP: (text, text, text, text, blob, mapping, mapping),
    }
    for read in readers[Op(op)]:
        read()
    return fields


@pytest.mark.parametrize("body", [VALID[0], VALID[1]], ids=["wrap", "unwrap"])
def test_each_length_field_set_huge_is_refused_without_allocating(body: bytes) -> None:
    fields = _every_length_field(body)
    assert len(fields) >= 5
    for offset, width in fields:
        for big in (0xFFFF, 0xFFFFFFFF) if width == 4 else (0xFFFF, MAX_CONTEXT_ENTRIES + 1):
            raw = bytearray(body)
            raw[offset : offset + width] = big.to_bytes(width, "big")
            tracemalloc.start()
            try:
                with pytest.raises(ProtocolError):
                    decode_request(bytes(raw))
                _now, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < 64 * 1024, (
                f"field at {offset} = {big:#x} made the decoder allocate {peak}"
            )


def test_length_prefix_outside_the_limits_is_refused() -> None:
    for length in (0, 5, MAX_REQUEST + 1, 0x7FFFFFFF, 0xFFFFFFFF):
        with pytest.raises(ProtocolError, match="outside"):
            frame_length(U32.pack(length), MAX_REQUEST)
    assert frame_length(U32.pack(6), MAX_REQUEST) == 6
    assert frame_length(U32.pack(MAX_REQUEST), MAX_REQUEST) == MAX_REQUEST
    assert frame_length(U32.pack(MAX_RESPONSE), MAX_RESPONSE) == MAX_RESPONSE
    with pytest.raises(ProtocolError):
        frame_length(U32.pack(MAX_RESPONSE + 1), MAX_RESPONSE)


@pytest.mark.parametrize("size", range(6))
def test_a_body_shorter_than_its_header_is_refused(size: int) -> None:
    body = HEAD.pack(VERSION, Op.LIST, 1)[:size]
    with pytest.raises(ProtocolError):
        decode_request(body)
    with pytest.raises(ProtocolError):
        decode_response(body, Op.LIST)
    with pytest.raises(ProtocolError):
        response_id(body)


def test_deeply_nested_json_in_a_response_is_a_protocol_error() -> None:
    """A daemon's JSON answer (info, list, admin ops) that nests deeper than Python recurses."""
    for raw in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 50_000 + b"]" * 50_000):
        body = response_body(b(raw))
        for op in (Op.INFO, Op.LIST, Op.CREATE):
            with pytest.raises(ProtocolError):
                decode_response(body, op)


# -- round trips ------------------------------------------------------------------------------


@FUZZ
@given(requests)
def test_every_request_round_trips(request: tuple[Op, int, tuple[Any, ...]]) -> None:
    op, request_id, args = request
    framed = encode_request(op, request_id, *args)
    assert frame_length(framed[:4], MAX_REQUEST) == len(framed) - 4
    decoded = decode_request(framed[4:])
    assert (decoded.op, decoded.request_id) == (op, request_id)
    assert decoded.args == args
    assert response_id(framed[4:]) == request_id  # same header layout


@FUZZ
@given(st.sampled_from(list(Op)).flatmap(lambda op: st.tuples(st.just(op), u32s, value_for(op))))
def test_every_response_round_trips(answer: tuple[Op, int, Any]) -> None:
    op, request_id, value = answer
    framed = encode_response(Request(op, request_id, ()), value)
    assert frame_length(framed[:4], MAX_RESPONSE) == len(framed) - 4
    decoded = decode_response(framed[4:], op)
    assert decoded.request_id == request_id == response_id(framed[4:])
    assert decoded.error is None
    assert decoded.value == value
    decoded.raise_error()  # success: nothing raised


ALLOWED_ERRORS = list(wire.ERROR_CLASSES.values())


@FUZZ
@given(
    st.sampled_from(ALLOWED_ERRORS), u32s, st.text(CHARS, max_size=200), st.sampled_from(list(Op))
)
def test_error_responses_round_trip_as_their_class(
    cls: type[KmsEnvelopeError], request_id: int, message: str, op: Op
) -> None:
    body = error_response(request_id, cls(message))[4:]
    decoded = decode_response(body, op)
    assert decoded.request_id == request_id
    with pytest.raises(cls) as caught:
        decoded.raise_error()
    assert type(caught.value) is cls


@FUZZ
@given(st.text(max_size=3000), u32s)
def test_any_error_message_gives_a_frame_the_client_can_read(message: str, request_id: int) -> None:
    """Whatever an exception's text (NUL, lone surrogates, very long), the error frame the daemon
    sends decodes: otherwise the client sees a protocol failure instead of the real error."""
    decoded = decode_response(error_response(request_id, UnwrapError(message))[4:], Op.UNWRAP)
    assert decoded.error is not None
    assert decoded.error[0] == "UnwrapError"
    assert len(decoded.error[1].encode("utf-8")) <= MAX_MESSAGE


def test_an_error_outside_the_allow_list_is_named_by_its_nearest_listed_base() -> None:
    cases: list[tuple[BaseException, type[BaseException]]] = [
        (WrongPassphraseError("x"), wire.ERROR_CLASSES["KeystoreError"]),
        (ThrottledError("x"), ProviderUnavailableError),
        (KeyDisabledError("x"), KeyDisabledError),
        (KmsEnvelopeError("x"), ProviderError),
        (ValueError("x"), ProviderError),
    ]
    for error, expected in cases:
        decoded = decode_response(error_response(9, error)[4:], Op.WRAP)
        with pytest.raises(expected) as caught:
            decoded.raise_error()
        assert type(caught.value) is expected


@pytest.mark.parametrize(
    "name", ["SystemExit", "KeyboardInterrupt", "KmsEnvelopeError", "__class__", "Exception"]
)
def test_a_response_naming_an_unlisted_class_raises_provider_error(name: str) -> None:
    """A hostile daemon cannot make the client raise an arbitrary exception class."""
    decoded = decode_response(response_body(s(name) + s("boom"), status=1), Op.WRAP)
    with pytest.raises(ProviderError) as caught:
        decoded.raise_error()
    assert type(caught.value) is ProviderError


def test_a_long_message_is_cut_to_valid_utf8() -> None:
    message = "é" * MAX_MESSAGE  # two bytes each: the cut falls inside a character or on one
    for text in (message, "x" + message):
        decoded = decode_response(error_response(1, AccessDeniedError(text))[4:], Op.INFO)
        assert decoded.error is not None
        out = decoded.error[1].encode("utf-8")
        assert MAX_MESSAGE - 1 <= len(out) <= MAX_MESSAGE
        assert text.startswith(decoded.error[1])


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=16),
        st.text(max_size=16),
        max_size=8,
    )
)
def test_every_context_an_envelope_accepts_crosses_the_wire(context: dict[str, str]) -> None:
    """Envelopes are the same with or without the daemon: a context the envelope format encodes
    (any non-empty str key, any str value, NUL included) must cross the wire unchanged."""
    try:
        encode_context(validate_context(context))
    except (ValueError, UnicodeEncodeError):
        return  # not an envelope context (lone surrogates): out of scope
    assert len(context) <= DEFAULT_LIMITS.max_context_entries
    decoded = decode_request(encode_request(Op.WRAP, 1, "local:k", DEK, context)[4:])
    assert decoded.args[2] == context
    wrapped = WrappedKey("local", "local:k/1", "AES-256-GCM", b"c" * 60)
    decoded = decode_request(encode_request(Op.UNWRAP, 2, "local:k", wrapped, context)[4:])
    assert decoded.args[2] == context


# -- limits: exactly at, and one past ---------------------------------------------------------


def test_a_string_of_max_string_bytes_passes_and_one_more_is_refused() -> None:
    at = "é" * (MAX_STRING // 2)  # multi-byte: the limit counts UTF-8 bytes, not characters
    assert len(at.encode()) == MAX_STRING
    assert decode_request(encode_request(Op.INFO, 1, at)[4:]).args == (at,)
    past = at + "x"
    with pytest.raises(ProtocolError):
        encode_request(Op.INFO, 1, past)
    with pytest.raises(ProtocolError, match="longer than"):
        decode_request(request_body(Op.INFO, s(past)))
    wrapped_at = WrappedKey("local", at, "AES-256-GCM", b"c")
    assert (
        decode_request(encode_request(Op.UNWRAP, 1, at, wrapped_at, {})[4:]).args[1] == wrapped_at
    )
    with pytest.raises(ProtocolError, match="longer than"):
        decode_request(request_body(Op.UNWRAP, s("local:k") + s("local") + s(past)))


def test_a_blob_of_max_blob_bytes_passes_and_one_more_is_refused() -> None:
    at = WrappedKey("local", "local:k/1", "AES-256-GCM", b"\xaa" * MAX_BLOB)
    assert decode_request(encode_request(Op.UNWRAP, 1, "local:k", at, {})[4:]).args[1] == at
    answer = decode_response(encode_response(Request(Op.WRAP, 1, ()), at)[4:], Op.WRAP)
    assert answer.value == at
    past = WrappedKey("local", "local:k/1", "AES-256-GCM", b"\xaa" * (MAX_BLOB + 1))
    with pytest.raises(ProtocolError):
        encode_request(Op.UNWRAP, 1, "local:k", past, {})
    with pytest.raises(ProtocolError):
        encode_response(Request(Op.WRAP, 1, ()), past)
    with pytest.raises(ProtocolError, match="longer than"):
        decode_request(unwrap_body(wrapped_fields(b"\xaa" * (MAX_BLOB + 1))))
    with pytest.raises(ProtocolError, match="longer than"):
        decode_response(response_body(wrapped_fields(b"\xaa" * (MAX_BLOB + 1))), Op.WRAP)


def test_a_backup_of_max_backup_bytes_passes_and_one_more_is_refused() -> None:
    request = Request(Op.BACKUP, 3, ())
    at = b"\x00" * MAX_BACKUP
    assert decode_response(encode_response(request, at)[4:], Op.BACKUP).value == at
    with pytest.raises(ProtocolError):
        encode_response(request, at + b"\x00")
    with pytest.raises(ProtocolError, match="longer than"):
        decode_response(response_body(U32.pack(MAX_BACKUP + 1)), Op.BACKUP)


def test_a_context_of_max_entries_passes_and_one_more_is_refused() -> None:
    at = {f"k{i}": f"v{i}" for i in range(MAX_CONTEXT_ENTRIES)}
    assert decode_request(encode_request(Op.WRAP, 1, "local:k", DEK, at)[4:]).args[2] == at
    past = {**at, "one-more": ""}
    with pytest.raises(ProtocolError):
        encode_request(Op.WRAP, 1, "local:k", DEK, past)
    pairs: list[tuple[str | bytes, str | bytes]] = [(k, v) for k, v in past.items()]
    with pytest.raises(ProtocolError, match="more than"):
        decode_request(wrap_body(context=m(pairs)))
    with pytest.raises(ProtocolError, match="more than"):  # a count with no entries behind it
        decode_request(wrap_body(context=U16.pack(0xFFFF)))
    params = {f"p{i}": "" for i in range(MAX_CONTEXT_ENTRIES)}
    wrapped = WrappedKey("local", "local:k/1", "A", b"c", params)
    assert (
        decode_request(encode_request(Op.UNWRAP, 1, "local:k", wrapped, {})[4:]).args[1] == wrapped
    )


def test_a_context_value_of_max_value_bytes_passes_and_one_more_is_refused() -> None:
    at = {"big": "v" * MAX_VALUE, "k" * MAX_VALUE: ""}
    assert decode_request(encode_request(Op.WRAP, 1, "local:k", DEK, at)[4:]).args[2] == at
    with pytest.raises(ProtocolError):
        encode_request(Op.WRAP, 1, "local:k", DEK, {"big": "v" * (MAX_VALUE + 1)})
    with pytest.raises(ProtocolError):
        encode_request(Op.WRAP, 1, "local:k", DEK, {"k" * (MAX_VALUE + 1): ""})


# -- each malformed field refused -------------------------------------------------------------

BAD_TEXT = {
    "invalid utf-8": b"\xff\xfe",
    "overlong utf-8": b"\xc0\xaf",
    "utf-8 surrogate": b"\xed\xa0\x80",
    "cut utf-8": "é".encode()[:1],
    "nul": b"k\x00",
    "only nul": b"\x00",
    "empty": b"",
}


@pytest.mark.parametrize("raw", BAD_TEXT.values(), ids=BAD_TEXT.keys())
def test_a_bad_string_field_is_refused_wherever_it_is(raw: bytes) -> None:
    bodies = [
        request_body(Op.INFO, s(raw)),
        request_body(Op.CREATE, s("k") + s(raw)),
        request_body(Op.DESTROY, s(raw) + U32.pack(1)),
        request_body(Op.BACKUP, s(raw)),
        wrap_body(uri=s(raw)),
        unwrap_body(s(raw) + s("local:k/1") + s("A") + b(b"c") + m([])),
        unwrap_body(s("local") + s(raw) + s("A") + b(b"c") + m([])),
        unwrap_body(s("local") + s("local:k/1") + s(raw) + b(b"c") + m([])),
    ]
    # A context (and a wrapped key's params) may hold NUL, as the envelope's context may
    # (docs/format.md 5.4); every other malformed text is refused there too.
    if b"\x00" not in raw:
        bodies += [
            wrap_body(context=m([(raw, "v")])),
            unwrap_body(wrapped_fields(params=m([(raw, "v")]))),
        ]
    if raw and b"\x00" not in raw:  # an empty context value is allowed; a malformed one is not
        bodies.append(wrap_body(context=m([("k", raw)])))
    for body in bodies:
        with pytest.raises(ProtocolError):
            decode_request(body)
    with pytest.raises(ProtocolError):
        decode_response(response_body(wrapped_fields().replace(s("local:k/1"), s(raw))), Op.WRAP)
    with pytest.raises(ProtocolError):
        decode_response(response_body(s(raw) + s("message"), status=1), Op.WRAP)


def test_an_empty_context_value_and_error_message_are_allowed() -> None:
    assert decode_request(wrap_body(context=m([("k", "")]))).args[2] == {"k": ""}
    decoded = decode_response(response_body(s("UnwrapError") + s(""), status=1), Op.UNWRAP)
    assert decoded.error == ("UnwrapError", "")


def test_duplicate_context_keys_are_refused() -> None:
    with pytest.raises(ProtocolError, match="twice"):
        decode_request(wrap_body(context=m([("a", "1"), ("b", "2"), ("a", "1")])))
    with pytest.raises(ProtocolError, match="twice"):
        decode_request(unwrap_body(context=m([("a", "1"), ("a", "2")])))
    with pytest.raises(ProtocolError, match="twice"):
        decode_request(unwrap_body(wrapped_fields(params=m([("iv", "1"), ("iv", "1")]))))


@pytest.mark.parametrize("size", [0, 1, 16, 31, 33, 64, MAX_BLOB])
def test_a_data_key_that_is_not_32_bytes_is_refused(size: int) -> None:
    with pytest.raises(ProtocolError, match="32 bytes"):
        decode_request(wrap_body(dek=b"\x01" * size))
    with pytest.raises(ProtocolError, match="32 bytes"):
        decode_response(response_body(b(b"\x01" * size)), Op.UNWRAP)


@pytest.mark.parametrize("code", [0, 11, 12, 127, 128, 255])
def test_an_unknown_op_is_refused(code: int) -> None:
    with pytest.raises(ProtocolError, match="unknown operation"):
        decode_request(request_body(code, s("k")))


@pytest.mark.parametrize("status", [2, 3, 127, 255])
def test_an_unknown_response_status_is_refused(status: int) -> None:
    with pytest.raises(ProtocolError, match="status"):
        decode_response(response_body(b(DEK), status=status), Op.UNWRAP)


@pytest.mark.parametrize("version", [0, 2, 3, 127, 255])
def test_a_wrong_protocol_version_is_refused(version: int) -> None:
    good = wrap_body()
    bad = bytes([version]) + good[1:]
    with pytest.raises(ProtocolError, match="version"):
        decode_request(bad)
    answer = encode_response(Request(Op.UNWRAP, 1, ()), DEK)[4:]
    with pytest.raises(ProtocolError, match="version"):
        decode_response(bytes([version]) + answer[1:], Op.UNWRAP)


@pytest.mark.parametrize("extra", [b"\x00", b"\x00\x00\x00\x00", b"junk" * 10])
def test_trailing_bytes_are_refused(extra: bytes) -> None:
    for body in VALID:
        for decode in _decoders_accepting(body):
            with pytest.raises(ProtocolError, match="after its last field"):
                decode(body + extra)


def test_a_malformed_json_answer_is_refused() -> None:
    for raw in (b"", b"{", b"\xff\xfe", b"[1,]", b"NaNx", "é".encode("latin-1")):
        with pytest.raises(ProtocolError, match="JSON"):
            decode_response(response_body(b(raw)), Op.INFO)


def test_decoded_messages_never_show_a_data_key_or_passphrase() -> None:
    request = decode_request(encode_request(Op.WRAP, 1, "local:k", DEK, {})[4:])
    backup = decode_request(encode_request(Op.BACKUP, 2, "hunter2-secret")[4:])
    answer = decode_response(encode_response(Request(Op.UNWRAP, 3, ()), DEK)[4:], Op.UNWRAP)
    for shown in (repr(request), str(request), repr(backup), repr(answer)):
        assert DEK.hex() not in shown
        assert repr(DEK) not in shown
        assert "hunter2" not in shown


def test_the_limits_are_consistent_with_the_envelope_format() -> None:
    """The wire's context limits match the envelope parser's, and a request carrying the largest
    context an envelope header holds fits in one request frame."""
    assert DEFAULT_LIMITS.max_context_entries == MAX_CONTEXT_ENTRIES
    assert DEFAULT_LIMITS.max_header_size <= MAX_REQUEST
