"""Known-answer vectors for kmsenvelope format v1 (``tests/vectors/v1.json``).

(a) the library reproduces every positive vector byte for byte and opens it;
(b) the library rejects every negative vector with the documented error;
(c) an independent reference reader/writer, written from ``docs/format.md`` alone with only
    ``cryptography``'s AES-GCM/HMAC/HKDF primitives, ``struct`` and the standard library (no
    import of ``kmsenvelope``), agrees on every vector -- the spec is implementable by itself;
(d) ``tests/vectors/generate.py`` still produces exactly the committed JSON.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import io
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors"
VECTORS_FILE = VECTORS_DIR / "v1.json"
DOC: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
VECTORS: list[dict[str, Any]] = DOC["vectors"]
POSITIVE = [v for v in VECTORS if v["expected"] == "ok"]
NEGATIVE = [v for v in VECTORS if v["expected"] != "ok"]
KEKS = {key_id: bytes.fromhex(k["key"]) for key_id, k in DOC["test_keks"].items()}


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def _library_marks(vec: dict[str, Any]) -> Any:
    return pytest.param(vec, id=vec["name"])


# =============================================================================================
# (c) The reference implementation: written from docs/format.md only.
# =============================================================================================


class RefMalformedError(Exception):
    """Section 10: the input is not a well-formed v1 envelope (found without any key)."""


class RefAuthenticationError(Exception):
    """Section 10: the envelope did not authenticate."""


class RefNoRecipientError(Exception):
    """Section 12: no recipient could be unwrapped."""


MAGIC = b"KMSENV"
VERSION = 0x01
MAX_HEADER_BODY = 1 << 20
MAX_RECIPIENTS = 64
MAX_CONTEXT_ENTRIES = 256
MIN_CHUNK = 16
MAX_CHUNK = 1 << 24
TAG = 16
MAC_LEN = 32
SCHEME_RE = re.compile(r"[a-z][a-z0-9+.\-]*\Z")
COMPACT_PREFIX = "kmsenv1."
B64URL_RE = re.compile(r"[A-Za-z0-9_-]*\Z")


@dataclass
class RefRecipient:
    provider: str
    key_id: str
    algorithm: str
    params: list[tuple[str, str]]
    wrapped: bytes


@dataclass
class RefHeader:
    chunk_size: int
    nonce: bytes
    context: dict[str, str]
    context_bytes: bytes  # the canonical context encoding, as it appears in the header
    recipients: list[RefRecipient]
    authenticated: bytes  # magic || version || length || body, as received
    mac: bytes
    payload: bytes


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RefMalformedError("header body too short")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def utf8(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise RefMalformedError("invalid UTF-8") from None

    def ascii(self, n: int) -> str:
        raw = self.take(n)
        if any(b > 0x7F for b in raw):
            raise RefMalformedError("non-ASCII byte")
        return raw.decode("ascii")


def ref_parse(data: bytes) -> RefHeader:
    """Sections 5 and 9: parse the binary form, enforcing every rule and limit."""
    if len(data) < 7 or data[:6] != MAGIC:
        raise RefMalformedError("no magic")
    if data[6] != VERSION:
        raise RefMalformedError("unsupported version")
    if len(data) < 11:
        raise RefMalformedError("truncated prefix")
    (body_len,) = struct.unpack(">I", data[7:11])
    if body_len > MAX_HEADER_BODY:
        raise RefMalformedError("header too large")
    if len(data) < 11 + body_len + MAC_LEN:
        raise RefMalformedError("truncated header")
    body = _Body(data[11 : 11 + body_len])

    chunk_size = body.u32()
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise RefMalformedError("chunk size out of range")
    nonce = body.take(16)

    ctx_start = body.pos
    n_ctx = body.u16()
    if n_ctx > MAX_CONTEXT_ENTRIES:
        raise RefMalformedError("too many context entries")
    context: dict[str, str] = {}
    prev: bytes | None = None
    for _ in range(n_ctx):
        raw_key = body.take(body.u16())
        if not raw_key or (prev is not None and raw_key <= prev):
            raise RefMalformedError("context keys empty, unsorted or repeated")
        prev = raw_key
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise RefMalformedError("invalid UTF-8") from None
        context[key] = body.utf8(body.u16())
    context_bytes = body.data[ctx_start : body.pos]

    n_rec = body.u16()
    if n_rec == 0 or n_rec > MAX_RECIPIENTS:
        raise RefMalformedError("recipient count out of range")
    recipients = []
    for _ in range(n_rec):
        provider = body.ascii(body.u8())
        key_id = body.utf8(body.u16())
        algorithm = body.ascii(body.u8())
        scheme, colon, rest = key_id.partition(":")
        if not colon or not rest or not SCHEME_RE.match(scheme) or scheme != provider:
            raise RefMalformedError("key id scheme does not name the provider")
        if not algorithm:
            raise RefMalformedError("empty algorithm")
        params: list[tuple[str, str]] = []
        prev_name: bytes | None = None
        for _ in range(body.u8()):
            raw_name = body.take(body.u8())
            if prev_name is not None and raw_name <= prev_name:
                raise RefMalformedError("params unsorted or repeated")
            prev_name = raw_name
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                raise RefMalformedError("invalid UTF-8") from None
            params.append((name, body.utf8(body.u16())))
        wrapped = body.take(body.u16())
        recipients.append(RefRecipient(provider, key_id, algorithm, params, wrapped))
    if body.pos != len(body.data):
        raise RefMalformedError("trailing bytes in header body")

    end = 11 + body_len
    return RefHeader(
        chunk_size,
        nonce,
        context,
        context_bytes,
        recipients,
        data[:end],
        data[end : end + MAC_LEN],
        data[end + MAC_LEN :],
    )


def ref_keys(dek: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """Section 6: HKDF-SHA256(ikm=DEK, salt=nonce, info) -> payload key || MAC key."""
    okm = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=nonce, info=b"kmsenvelope/v1 keys"
    ).derive(dek)
    return okm[:32], okm[32:]


def ref_mac(mac_key: bytes, authenticated: bytes) -> bytes:
    h = crypto_hmac.HMAC(mac_key, hashes.SHA256())
    h.update(authenticated)
    return h.finalize()


def ref_verify_mac(header: RefHeader, mac_key: bytes) -> None:
    """Section 5.6: HMAC-SHA256 over the received bytes, compared in constant time."""
    h = crypto_hmac.HMAC(mac_key, hashes.SHA256())
    h.update(header.authenticated)
    try:
        h.verify(header.mac)
    except InvalidSignature:
        raise RefAuthenticationError("header MAC") from None


def ref_chunk_nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def ref_decrypt_payload(payload: bytes, payload_key: bytes, chunk_size: int) -> bytes:
    """Section 7.3, as a streaming reader with one chunk of lookahead would see it."""
    aead = AESGCM(payload_key)
    block = chunk_size + TAG
    src = io.BytesIO(payload)
    out = bytearray()
    index = 0
    current = src.read(block)
    while True:
        following = src.read(block) if len(current) == block else b""
        last = not following
        if len(current) < TAG:
            raise RefAuthenticationError("chunk shorter than a tag")
        if last and len(current) == TAG and index > 0:
            raise RefAuthenticationError("empty final chunk after data")
        try:
            out += aead.decrypt(ref_chunk_nonce(index, last), current, None)
        except InvalidTag:
            raise RefAuthenticationError("chunk") from None
        if last:
            return bytes(out)
        current = following
        index += 1


def ref_open_with_dek(envelope: bytes, dek: bytes) -> bytes:
    header = ref_parse(envelope)
    payload_key, mac_key = ref_keys(dek, header.nonce)
    ref_verify_mac(header, mac_key)
    return ref_decrypt_payload(header.payload, payload_key, header.chunk_size)


def ref_from_compact(text: str) -> bytes:
    """Section 8: skip leading SP/HT/CR/LF, check the prefix, strict unpadded base64url."""
    stripped = text.lstrip(" \t\r\n")
    if not stripped.startswith(COMPACT_PREFIX):
        raise RefMalformedError("no compact prefix")
    b64 = "".join(c for c in stripped[len(COMPACT_PREFIX) :] if c not in " \t\r\n")
    if not B64URL_RE.match(b64) or len(b64) % 4 == 1:
        raise RefMalformedError("not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except (binascii.Error, ValueError):
        raise RefMalformedError("not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != b64:
        raise RefMalformedError("non-canonical base64url")
    return raw


def ref_to_compact(binary: bytes) -> str:
    return COMPACT_PREFIX + base64.urlsafe_b64encode(binary).rstrip(b"=").decode("ascii")


def ref_encode_context(context: dict[str, str]) -> bytes:
    """Section 5.4: the canonical context encoding."""
    items = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items())
    out = struct.pack(">H", len(items))
    for k, v in items:
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def ref_wrap_aad(provider: str, key_id: str, context_bytes: bytes) -> bytes:
    """Sections 15.3 and 15.5: the AAD of the built-in AES-256-GCM wrapping algorithms."""
    if provider == "local":
        return b"kmsenvelope-local/1\x00" + key_id.encode("utf-8") + b"\x00" + context_bytes
    if provider == "memory":
        return key_id.encode("utf-8") + b"\x00" + context_bytes
    raise KeyError(provider)


def ref_unwrap(recipient: RefRecipient, context_bytes: bytes, keks: dict[str, bytes]) -> bytes:
    if recipient.algorithm != "AES-256-GCM" or recipient.key_id not in keks:
        raise LookupError("not ours")
    w = recipient.wrapped
    aad = ref_wrap_aad(recipient.provider, recipient.key_id, context_bytes)
    return AESGCM(keks[recipient.key_id]).decrypt(w[:12], w[12:], aad)


def ref_decrypt(
    envelope: bytes, keks: dict[str, bytes], caller_context: dict[str, str] | None = None
) -> tuple[bytes, list[str]]:
    """Section 12, step by step. Returns the plaintext and the providers skipped."""
    header = ref_parse(envelope)  # 1. parse, limits first
    for key, value in (caller_context or {}).items():  # 2. caller context subset match
        if header.context.get(key) != value:
            raise RefAuthenticationError("context")
    skipped: list[str] = []
    for recipient in header.recipients:  # 3. recipients in order
        if recipient.provider not in ("local", "memory"):
            skipped.append(recipient.provider)  # unknown provider: skip
            continue
        try:
            dek = ref_unwrap(recipient, header.context_bytes, keks)
        except (LookupError, InvalidTag):
            continue
        if len(dek) != 32:
            continue
        payload_key, mac_key = ref_keys(dek, header.nonce)  # 4. derive
        ref_verify_mac(header, mac_key)  # 5. MAC before any plaintext
        return ref_decrypt_payload(header.payload, payload_key, header.chunk_size), skipped
    raise RefNoRecipientError(skipped)


def ref_seal(
    plaintext: bytes,
    recipients: list[dict[str, Any]],
    context: dict[str, str],
    dek: bytes,
    nonce: bytes,
    chunk_size: int,
) -> bytes:
    """Sections 5-7 as a writer: the envelope for exactly these inputs."""
    body = struct.pack(">I", chunk_size) + nonce + ref_encode_context(context)
    body += struct.pack(">H", len(recipients))
    for r in recipients:
        for text, width in ((r["provider"], ">B"), (r["key_id"], ">H"), (r["algorithm"], ">B")):
            raw = text.encode("utf-8")
            body += struct.pack(width, len(raw)) + raw
        params = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in r["params"].items())
        body += struct.pack(">B", len(params))
        for k, v in params:
            body += struct.pack(">B", len(k)) + k + struct.pack(">H", len(v)) + v
        wrapped = bytes.fromhex(r["wrapped"])
        body += struct.pack(">H", len(wrapped)) + wrapped
    authenticated = MAGIC + bytes([VERSION]) + struct.pack(">I", len(body)) + body
    payload_key, mac_key = ref_keys(dek, nonce)
    out = bytearray(authenticated + ref_mac(mac_key, authenticated))
    aead = AESGCM(payload_key)
    pieces = [plaintext[i : i + chunk_size] for i in range(0, len(plaintext), chunk_size)] or [b""]
    for index, piece in enumerate(pieces):
        out += aead.encrypt(ref_chunk_nonce(index, index == len(pieces) - 1), piece, None)
    return bytes(out)


def _category(exc: BaseException) -> str:
    if isinstance(exc, RefMalformedError):
        return "malformed"
    if isinstance(exc, RefAuthenticationError):
        return "authentication"
    return f"unexpected {type(exc).__name__}"


@pytest.mark.parametrize("vec", POSITIVE, ids=_ids(POSITIVE))
def test_reference_reader_opens_positive_vectors(vec: dict[str, Any]) -> None:
    envelope = bytes.fromhex(vec["envelope"])
    plaintext = bytes.fromhex(vec["plaintext"])
    dek = bytes.fromhex(vec["dek"])
    assert ref_open_with_dek(envelope, dek) == plaintext
    assert ref_from_compact(vec["compact"]) == envelope
    assert ref_to_compact(envelope) == vec["compact"]
    header = ref_parse(envelope)
    assert header.chunk_size == vec["chunk_size"]
    assert header.nonce.hex() == vec["nonce"]
    assert header.context == vec["context"]
    assert [
        (r.provider, r.key_id, r.algorithm, dict(r.params), r.wrapped.hex())
        for r in header.recipients
    ] == [
        (r["provider"], r["key_id"], r["algorithm"], r["params"], r["wrapped"])
        for r in vec["recipients"]
    ]


@pytest.mark.parametrize("vec", POSITIVE, ids=_ids(POSITIVE))
def test_reference_reader_unwraps_with_test_keks(vec: dict[str, Any]) -> None:
    """The full decryption procedure, unwrapping the DEK with the published test KEKs."""
    envelope = bytes.fromhex(vec["envelope"])
    plaintext, skipped = ref_decrypt(envelope, KEKS, caller_context=vec["context"])
    assert plaintext == bytes.fromhex(vec["plaintext"])
    known = {"local", "memory"}
    assert skipped == [r["provider"] for r in vec["recipients"] if r["provider"] not in known]
    header = ref_parse(envelope)
    for r in header.recipients:
        if r.key_id in KEKS:
            assert ref_unwrap(r, header.context_bytes, KEKS).hex() == vec["dek"]
    if vec["context"]:
        key = sorted(vec["context"])[0]
        with pytest.raises(RefAuthenticationError):
            ref_decrypt(envelope, KEKS, caller_context={key: vec["context"][key] + "x"})


@pytest.mark.parametrize("vec", POSITIVE, ids=_ids(POSITIVE))
def test_reference_writer_reproduces_positive_vectors(vec: dict[str, Any]) -> None:
    envelope = ref_seal(
        bytes.fromhex(vec["plaintext"]),
        vec["recipients"],
        vec["context"],
        bytes.fromhex(vec["dek"]),
        bytes.fromhex(vec["nonce"]),
        vec["chunk_size"],
    )
    assert envelope.hex() == vec["envelope"]


def _forms(vec: dict[str, Any]) -> list[tuple[bool, str]]:
    """(is_compact, text) for each encoding a negative vector provides."""
    forms = [(True, vec["compact"])]
    if vec["envelope"] is not None:
        forms.insert(0, (False, vec["envelope"]))
    return forms


def _ref_open_form(is_compact: bool, text: str, dek: bytes) -> bytes:
    envelope = ref_from_compact(text) if is_compact else bytes.fromhex(text)
    return ref_open_with_dek(envelope, dek)


@pytest.mark.parametrize("vec", NEGATIVE, ids=_ids(NEGATIVE))
def test_reference_reader_rejects_negative_vectors(vec: dict[str, Any]) -> None:
    dek = bytes.fromhex(vec["dek"])
    for is_compact, text in _forms(vec):
        with pytest.raises((RefMalformedError, RefAuthenticationError)) as info:
            _ref_open_form(is_compact, text, dek)
        assert _category(info.value) == vec["expected"], (is_compact, info.value)


@pytest.mark.parametrize("vec", POSITIVE[:3], ids=_ids(POSITIVE[:3]))
def test_compact_whitespace_is_ignored(vec: dict[str, Any]) -> None:
    """Section 8: whitespace before the prefix and anywhere in the base64 text is ignored."""
    from kmsenvelope.format.compact import from_compact

    text = vec["compact"]
    wrapped = " \n" + "\r\n".join(text[i : i + 20] for i in range(0, len(text), 20)) + "\t\n"
    assert ref_from_compact(wrapped) == bytes.fromhex(vec["envelope"])
    assert from_compact(wrapped) == bytes.fromhex(vec["envelope"])


# =============================================================================================
# (a) and (b): the library against the vectors.
# =============================================================================================


@pytest.mark.parametrize("vec", POSITIVE, ids=_ids(POSITIVE))
def test_library_seal_reproduces_positive_vectors(vec: dict[str, Any]) -> None:
    from kmsenvelope import WrappedKey, hazmat

    recipients = [
        WrappedKey(
            r["provider"], r["key_id"], r["algorithm"], bytes.fromhex(r["wrapped"]), r["params"]
        )
        for r in vec["recipients"]
    ]
    envelope = hazmat.seal(
        bytes.fromhex(vec["plaintext"]),
        recipients,
        vec["context"],
        dek=bytes.fromhex(vec["dek"]),
        nonce=bytes.fromhex(vec["nonce"]),
        chunk_size=vec["chunk_size"],
    )
    assert envelope.hex() == vec["envelope"]


@pytest.mark.parametrize("vec", POSITIVE, ids=_ids(POSITIVE))
def test_library_opens_positive_vectors(vec: dict[str, Any]) -> None:
    from kmsenvelope import hazmat
    from kmsenvelope.format.compact import from_compact, to_compact

    envelope = bytes.fromhex(vec["envelope"])
    assert hazmat.open_with_dek(envelope, bytes.fromhex(vec["dek"])) == bytes.fromhex(
        vec["plaintext"]
    )
    assert to_compact(envelope).decode("ascii") == vec["compact"]
    assert from_compact(vec["compact"]) == envelope
    header, _size = hazmat.parse_header(envelope)
    assert header.chunk_size == vec["chunk_size"]
    assert dict(header.context) == vec["context"]
    assert [r.key_id for r in header.recipients] == [r["key_id"] for r in vec["recipients"]]


@pytest.mark.parametrize(
    "vec",
    [v for v in POSITIVE if any(r["provider"] == "memory" for r in v["recipients"])],
    ids=lambda v: v["name"],
)
def test_library_engine_decrypts_with_memory_kek(vec: dict[str, Any]) -> None:
    """The full decrypt procedure: unknown providers skipped, context checked, MAC, chunks."""
    from kmsenvelope import AuthenticationError, Config, Engine, ProviderRegistry
    from kmsenvelope.memory import InMemoryKEK

    kek = InMemoryKEK(KEKS["memory:vectors"], "vectors")
    engine = Engine(registry=ProviderRegistry(), config=Config(), keys=[kek])
    plaintext = bytes.fromhex(vec["plaintext"])
    envelope = bytes.fromhex(vec["envelope"])
    assert engine.decrypt(envelope, vec["context"]) == plaintext
    assert engine.decrypt(vec["compact"], vec["context"]) == plaintext
    out = io.BytesIO()
    engine.decrypt_stream(io.BytesIO(vec["compact"].encode() + b"\n"), out, vec["context"])
    assert out.getvalue() == plaintext
    with pytest.raises(AuthenticationError):
        engine.decrypt(envelope, {**vec["context"], "not-in-envelope": "x"})


@pytest.mark.parametrize("vec", [_library_marks(v) for v in NEGATIVE if v["name"] != "wrong-dek"])
def test_library_engine_rejects_negative_vectors(vec: dict[str, Any]) -> None:
    """Through the engine (KEKs, not the DEK): malformed stays malformed; everything else is a
    DecryptionError -- authentication, or no-recipient where a KEK binds what was changed."""
    from kmsenvelope import (
        Config,
        DecryptionError,
        Engine,
        MalformedEnvelopeError,
        ProviderRegistry,
    )
    from kmsenvelope.memory import InMemoryKEK

    kek = InMemoryKEK(KEKS["memory:vectors"], "vectors")
    engine = Engine(registry=ProviderRegistry(), config=Config(), keys=[kek])

    def decrypt(is_compact: bool, text: str, streaming: bool) -> bytes:
        blob: bytes | str = text if is_compact else bytes.fromhex(text)
        if not streaming:
            return engine.decrypt(blob)
        out = io.BytesIO()
        raw = blob.encode("ascii") if isinstance(blob, str) else blob
        engine.decrypt_stream(io.BytesIO(raw), out)
        return out.getvalue()

    for is_compact, text in _forms(vec):
        for streaming in (False, True):
            with pytest.raises(DecryptionError) as info:
                decrypt(is_compact, text, streaming)
            malformed = isinstance(info.value, MalformedEnvelopeError)
            assert malformed == (vec["expected"] == "malformed"), (is_compact, streaming)


def test_library_local_wrap_aad_matches_spec() -> None:
    """The local HSM's AES-256-GCM wrapping binds exactly the AAD of section 15.3."""
    from kmsenvelope.local.keystore import Keystore

    for vec in POSITIVE:
        for r in vec["recipients"]:
            if r["provider"] != "local":
                continue
            context_bytes = ref_encode_context(vec["context"])
            assert Keystore._aad(r["key_id"], vec["context"]) == ref_wrap_aad(
                "local", r["key_id"], context_bytes
            )


@pytest.mark.parametrize("vec", [_library_marks(v) for v in NEGATIVE])
def test_library_rejects_negative_vectors(vec: dict[str, Any]) -> None:
    from kmsenvelope import AuthenticationError, MalformedEnvelopeError, hazmat
    from kmsenvelope.format.compact import from_compact

    def open_form(is_compact: bool, text: str) -> bytes:
        envelope = from_compact(text) if is_compact else bytes.fromhex(text)
        return hazmat.open_with_dek(envelope, dek)

    dek = bytes.fromhex(vec["dek"])
    for is_compact, text in _forms(vec):
        with pytest.raises(AuthenticationError) as info:
            open_form(is_compact, text)
        malformed = isinstance(info.value, MalformedEnvelopeError)
        assert malformed == (vec["expected"] == "malformed"), (is_compact, info.value)


# =============================================================================================
# (d) The committed vectors are what the generator produces.
# =============================================================================================


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kmsenvelope_vectors_generate", VECTORS_DIR / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_output_matches_committed_vectors() -> None:
    generator = _load_generator()
    assert generator.render() == VECTORS_FILE.read_text(encoding="utf-8")


def test_vectors_cover_the_required_cases() -> None:
    names = {v["name"] for v in VECTORS}
    required = {
        "empty",
        "one-byte",
        "chunk-minus-one",
        "chunk-exact",
        "chunk-plus-one",
        "several-chunks",
        "unicode-context",
        "two-recipients-with-params",
        "mac-flipped",
        "payload-flipped",
        "truncated-at-chunk-boundary",
        "swapped-chunks",
        "empty-final-chunk-appended",
        "wrong-version",
        "header-length-over-limit",
        "wrong-dek",
    }
    assert required <= names
    assert len(names) == len(VECTORS)
