"""Generate the kmsenvelope format v1 known-answer vectors: ``tests/vectors/v1.json``.

Deterministic: every DEK, nonce, KEK key and wrapping nonce below is derived from a fixed
label with SHA-256, so running this again writes a byte-identical file (the test suite checks
that). Positive envelopes are produced by ``kmsenvelope.hazmat.seal`` with the recipients given
as literal ``WrappedKey`` data; negative ones are derived from them by a documented mutation.
Several negative vectors are *well-formed apart from one rule* (their header MAC or chunk tags
are valid), so that only the rule they break can reject them.

Usage::

    python tests/vectors/generate.py          # rewrite v1.json
    python tests/vectors/generate.py --check  # exit 1 if v1.json is out of date

The format is specified in ``docs/format.md``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsenvelope import WrappedKey, hazmat

OUTPUT = Path(__file__).with_name("v1.json")

MAGIC = b"KMSENV\x01"
TAG = 16
MAC = 32
KDF_INFO = b"kmsenvelope/v1 keys"


def _h(label: str, n: int = 32) -> bytes:
    """``n`` deterministic bytes named by ``label``."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"kmsenvelope v1 vectors/{counter}/{label}".encode()).digest()
        counter += 1
    return out[:n]


def _pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + 7 + seed) & 0xFF for i in range(n))


# -- test KEKs (published in the vectors file so that readers can unwrap for real) ----------

MEMORY_KEY_ID = "memory:vectors"
MEMORY_KEK = _h("memory KEK")
LOCAL_KEY_ID = "local:vectors/1"
LOCAL_KEK = _h("local KEK")


def canonical_context(context: Mapping[str, str]) -> bytes:
    """docs/format.md section 5.4: u16 count, then (u16 len, key, u16 len, value) sorted."""
    items = sorted((k.encode(), v.encode()) for k, v in context.items())
    out = struct.pack(">H", len(items))
    for k, v in items:
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def memory_wrap(dek: bytes, context: Mapping[str, str], label: str) -> WrappedKey:
    """The ``memory`` provider's AES-256-GCM wrap, with a fixed wrapping nonce."""
    nonce = _h("memory wrap nonce " + label, 12)
    aad = MEMORY_KEY_ID.encode() + b"\x00" + canonical_context(context)
    ct = nonce + AESGCM(MEMORY_KEK).encrypt(nonce, dek, aad)
    return WrappedKey("memory", MEMORY_KEY_ID, "AES-256-GCM", ct)


def local_wrap(dek: bytes, context: Mapping[str, str], label: str) -> WrappedKey:
    """The ``local`` provider's AES-256-GCM wrap, with a fixed wrapping nonce."""
    nonce = _h("local wrap nonce " + label, 12)
    aad = b"kmsenvelope-local/1\x00" + LOCAL_KEY_ID.encode() + b"\x00" + canonical_context(context)
    ct = nonce + AESGCM(LOCAL_KEK).encrypt(nonce, dek, aad)
    return WrappedKey("local", LOCAL_KEY_ID, "AES-256-GCM", ct)


def example_recipient(label: str) -> WrappedKey:
    """A third-party provider's stanza: opaque bytes, with params. No reader can unwrap it."""
    return WrappedKey(
        "example-kms",
        "example-kms:projects/demo/locations/eu/keys/orders/versions/3",
        "EXAMPLE-RSA-OAEP-3072-SHA256",
        _h("example wrapped key " + label, 384),
        {"region": "eu-west-1", "key-version": "3", "Origin": "hsm", "note": "ünïcode ok"},
    )


# -- low-level helpers to build deliberately broken envelopes -------------------------------


def derive(dek: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """HKDF-SHA256(ikm=DEK, salt=nonce, info) -> (payload key, MAC key)."""
    prk = hmac.digest(nonce, dek, "sha256")
    t1 = hmac.digest(prk, KDF_INFO + b"\x01", "sha256")
    t2 = hmac.digest(prk, t1 + KDF_INFO + b"\x02", "sha256")
    return t1, t2


def split(envelope: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(prefix, body, mac, payload) of a well-formed binary envelope."""
    (length,) = struct.unpack(">I", envelope[7:11])
    end = 11 + length
    return envelope[:11], envelope[11:end], envelope[end : end + MAC], envelope[end + MAC :]


def seal_raw_body(body: bytes, mac_key: bytes, payload: bytes, magic: bytes = MAGIC) -> bytes:
    """An envelope around an arbitrary header body, with a *valid* header MAC."""
    auth = magic + struct.pack(">I", len(body)) + body
    return auth + hmac.digest(mac_key, auth, "sha256") + payload


def str8(raw: bytes) -> bytes:
    return struct.pack(">B", len(raw)) + raw


def str16(raw: bytes) -> bytes:
    return struct.pack(">H", len(raw)) + raw


def raw_recipient(
    provider: bytes,
    key_id: bytes,
    algorithm: bytes,
    params: Sequence[tuple[bytes, bytes]],
    wrapped: bytes,
) -> bytes:
    out = str8(provider) + str16(key_id) + str8(algorithm) + struct.pack(">B", len(params))
    for name, value in params:
        out += str8(name) + str16(value)
    return out + str16(wrapped)


def raw_body(
    chunk_size: int,
    nonce: bytes,
    context: Sequence[tuple[bytes, bytes]],
    recipients: Sequence[bytes],
    trailing: bytes = b"",
) -> bytes:
    out = struct.pack(">I", chunk_size) + nonce + struct.pack(">H", len(context))
    for k, v in context:
        out += str16(k) + str16(v)
    out += struct.pack(">H", len(recipients)) + b"".join(recipients)
    return out + trailing


def chunks(payload: bytes, chunk_size: int) -> list[bytes]:
    block = chunk_size + TAG
    return [payload[i : i + block] for i in range(0, len(payload), block)]


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def to_compact(binary: bytes) -> str:
    return "kmsenv1." + base64.urlsafe_b64encode(binary).rstrip(b"=").decode("ascii")


# -- the vectors ----------------------------------------------------------------------------


def _recipient_json(r: WrappedKey) -> dict[str, Any]:
    return {
        "provider": r.provider,
        "key_id": r.key_id,
        "algorithm": r.algorithm,
        "params": dict(sorted(r.params.items())),
        "wrapped": r.ciphertext.hex(),
    }


class Builder:
    def __init__(self) -> None:
        self.vectors: list[dict[str, Any]] = []
        self.positive: dict[str, dict[str, Any]] = {}

    def ok(
        self,
        name: str,
        description: str,
        plaintext: bytes,
        *,
        chunk_size: int = 64,
        context: Mapping[str, str] | None = None,
        recipients: Callable[[bytes, Mapping[str, str]], list[WrappedKey]] | None = None,
    ) -> dict[str, Any]:
        context = dict(context or {})
        dek = _h("dek " + name)
        nonce = _h("nonce " + name, 16)
        if recipients is None:
            wrapped = [memory_wrap(dek, context, name)]
        else:
            wrapped = recipients(dek, context)
        envelope = hazmat.seal(
            plaintext, wrapped, context, dek=dek, nonce=nonce, chunk_size=chunk_size
        )
        vec = {
            "name": name,
            "description": description,
            "expected": "ok",
            "dek": dek.hex(),
            "nonce": nonce.hex(),
            "chunk_size": chunk_size,
            "context": context,
            "recipients": [_recipient_json(r) for r in wrapped],
            "plaintext": plaintext.hex(),
            "envelope": envelope.hex(),
            "compact": to_compact(envelope),
        }
        self.vectors.append(vec)
        self.positive[name] = vec
        return vec

    def bad(
        self,
        name: str,
        description: str,
        expected: str,
        base: str,
        envelope: bytes | None,
        *,
        dek: bytes | None = None,
        compact: str | None = None,
    ) -> None:
        src = self.positive[base]
        assert expected in ("authentication", "malformed")
        self.vectors.append(
            {
                "name": name,
                "description": description,
                "expected": expected,
                "base": base,
                "dek": (dek.hex() if dek is not None else src["dek"]),
                "nonce": src["nonce"],
                "chunk_size": src["chunk_size"],
                "context": src["context"],
                "recipients": src["recipients"],
                "plaintext": None,
                "envelope": envelope.hex() if envelope is not None else None,
                "compact": compact if compact is not None else to_compact(envelope or b""),
            }
        )


def build() -> dict[str, Any]:
    b = Builder()

    # ---- positive vectors -----------------------------------------------------------------
    b.ok("empty", "Empty plaintext: exactly one chunk, empty and final (16-byte tag only).", b"")
    b.ok("one-byte", "One byte of plaintext in a single final chunk.", b"\x2a")
    b.ok(
        "chunk-minus-one",
        "Chunk size - 1 bytes (63 with chunk size 64): one short final chunk.",
        _pattern(63),
    )
    b.ok(
        "chunk-exact",
        "Exactly one chunk size (64 bytes): the final chunk is full; no empty chunk follows.",
        _pattern(64, 1),
    )
    b.ok(
        "chunk-plus-one",
        "Chunk size + 1 bytes (65): one full non-final chunk, then a final chunk of 1 byte.",
        _pattern(65, 2),
    )
    b.ok(
        "several-chunks",
        "209 bytes = 3 full chunks and a final chunk of 17 bytes, with a context.",
        _pattern(209, 3),
        context={"purpose": "vectors", "tenant": "acme"},
    )
    b.ok(
        "four-full-chunks",
        "256 bytes = 4 full chunks; the 4th (full) chunk is final.",
        _pattern(256, 4),
        context={"purpose": "vectors"},
    )
    b.ok(
        "minimum-chunk-size",
        "The smallest chunk size (16) and 40 bytes: chunks of 16, 16 and 8 bytes.",
        _pattern(40, 5),
        chunk_size=16,
    )
    b.ok(
        "default-chunk-size",
        "The default chunk size (1 MiB) and a short text.",
        b"hello, kmsenvelope\n",
        chunk_size=1 << 20,
    )
    b.ok(
        "unicode-context",
        "Non-ASCII context keys and values, wrapped by a local AES-256-GCM key. Keys are sorted "
        "by their UTF-8 bytes: U+FF21 sorts before U+1F511 (UTF-16 order would swap them), "
        "'B' before 'a'.",
        "Grüße, 世界 🔐".encode(),
        context={
            "a": "lower",
            "B": "upper",
            "tenant": "Zürich",
            "ключ": "значение",
            "\uff21": "fullwidth A",
            "\U0001f511": "key emoji",
            "empty-value": "",
        },
        recipients=lambda dek, ctx: [local_wrap(dek, ctx, "unicode-context")],
    )
    b.ok(
        "two-recipients-with-params",
        "Two recipients: first a third-party provider (example-kms) with params, which readers "
        "without that provider skip; then the memory test KEK. Params are sorted by name bytes "
        "('Origin' < 'key-version' < 'note' < 'region').",
        _pattern(100, 6),
        context={"purpose": "multi-recipient"},
        recipients=lambda dek, ctx: [
            example_recipient("two-recipients-with-params"),
            memory_wrap(dek, ctx, "two-recipients-with-params"),
        ],
    )
    b.ok(
        "memory-and-local",
        "The same DEK wrapped by the memory and the local test KEKs (either one opens it).",
        _pattern(130, 7),
        context={"app": "billing"},
        recipients=lambda dek, ctx: [
            memory_wrap(dek, ctx, "memory-and-local"),
            local_wrap(dek, ctx, "memory-and-local"),
        ],
    )

    # ---- negative vectors: tampering, truncation, reordering --------------------------------
    several = bytes.fromhex(b.positive["several-chunks"]["envelope"])
    pre, body, mac, payload = split(several)
    b.bad(
        "mac-flipped",
        "Last byte of the header MAC flipped.",
        "authentication",
        "several-chunks",
        pre + body + flip(mac, MAC - 1) + payload,
    )
    b.bad(
        "payload-flipped",
        "One ciphertext byte of the first chunk flipped.",
        "authentication",
        "several-chunks",
        pre + body + mac + flip(payload, 5),
    )
    b.bad(
        "tag-flipped",
        "One byte of the final chunk's tag flipped.",
        "authentication",
        "several-chunks",
        pre + body + mac + flip(payload, len(payload) - 1),
    )
    b.bad(
        "header-byte-flipped",
        "One byte of the nonce in the header body flipped (MAC no longer matches).",
        "authentication",
        "several-chunks",
        pre + flip(body, 4 + 3) + mac + payload,
    )
    b.bad(
        "context-value-changed",
        "A context value changed ('acme' -> 'acmf'); the MAC no longer matches.",
        "authentication",
        "several-chunks",
        pre + body.replace(b"acme", b"acmf") + mac + payload,
    )
    b.bad(
        "wrong-dek",
        "Untouched envelope opened with another DEK (first byte flipped): the "
        "header MAC does not verify.",
        "authentication",
        "several-chunks",
        several,
        dek=flip(bytes.fromhex(b.positive["several-chunks"]["dek"]), 0),
    )
    b.bad(
        "trailing-data",
        "One byte appended after the final chunk.",
        "authentication",
        "several-chunks",
        several + b"\x00",
    )

    full = bytes.fromhex(b.positive["four-full-chunks"]["envelope"])
    fpre, fbody, fmac, fpayload = split(full)
    fchunks = chunks(fpayload, 64)
    assert len(fchunks) == 4
    b.bad(
        "truncated-at-chunk-boundary",
        "The final chunk removed (3 of 4 chunks remain): chunk 2 was written as non-final.",
        "authentication",
        "four-full-chunks",
        fpre + fbody + fmac + b"".join(fchunks[:3]),
    )
    b.bad(
        "truncated-after-header",
        "The whole payload removed: no final chunk at all.",
        "authentication",
        "four-full-chunks",
        fpre + fbody + fmac,
    )
    b.bad(
        "truncated-mid-chunk",
        "The last 10 bytes removed (inside the final chunk).",
        "authentication",
        "four-full-chunks",
        full[:-10],
    )
    b.bad(
        "swapped-chunks",
        "Chunks 0 and 1 swapped.",
        "authentication",
        "four-full-chunks",
        fpre + fbody + fmac + fchunks[1] + fchunks[0] + fchunks[2] + fchunks[3],
    )
    b.bad(
        "duplicated-chunk",
        "Chunk 0 repeated in place of chunk 1.",
        "authentication",
        "four-full-chunks",
        fpre + fbody + fmac + fchunks[0] + fchunks[0] + fchunks[2] + fchunks[3],
    )
    # A non-conforming writer: 4 full chunks, all flagged non-final, then an empty chunk
    # flagged final. Every tag is valid; only the "empty final chunk only for an empty
    # plaintext" rule rejects it.
    fdek = bytes.fromhex(b.positive["four-full-chunks"]["dek"])
    fnonce = bytes.fromhex(b.positive["four-full-chunks"]["nonce"])
    payload_key, _ = derive(fdek, fnonce)
    aead = AESGCM(payload_key)
    plain = bytes.fromhex(b.positive["four-full-chunks"]["plaintext"])
    bad_payload = b"".join(
        aead.encrypt(i.to_bytes(11, "big") + b"\x00", plain[i * 64 : (i + 1) * 64], None)
        for i in range(4)
    ) + aead.encrypt((4).to_bytes(11, "big") + b"\x01", b"", None)
    b.bad(
        "empty-final-chunk-appended",
        "Four full chunks flagged non-final followed by a "
        "validly encrypted EMPTY final chunk (index 4). All tags verify; readers must reject "
        "an empty final chunk after data.",
        "authentication",
        "four-full-chunks",
        fpre + fbody + fmac + bad_payload,
    )
    b.bad(
        "empty-final-chunk-tag-only",
        "Four full chunks then 16 zero bytes (a tag-sized final 'chunk').",
        "authentication",
        "four-full-chunks",
        full + bytes(16),
    )

    # ---- negative vectors: prefix and limits (rejected before any key is used) -------------
    one = bytes.fromhex(b.positive["one-byte"]["envelope"])
    b.bad(
        "wrong-version",
        "Version byte 0x02 instead of 0x01.",
        "malformed",
        "one-byte",
        one[:6] + b"\x02" + one[7:],
    )
    b.bad(
        "bad-magic",
        "Magic 'KMSENW' instead of 'KMSENV'.",
        "malformed",
        "one-byte",
        b"KMSENW" + one[6:],
    )
    b.bad(
        "header-length-over-limit",
        "Header body length field 1048577 (limit 1048576); "
        "only the 11-byte prefix is present: the reader must refuse before reading (or "
        "allocating) the body.",
        "malformed",
        "one-byte",
        MAGIC + struct.pack(">I", (1 << 20) + 1),
    )
    b.bad(
        "header-truncated",
        "Envelope cut inside the header body.",
        "malformed",
        "one-byte",
        one[:20],
    )
    b.bad(
        "mac-truncated",
        "Envelope cut inside the header MAC.",
        "malformed",
        "one-byte",
        one[: len(one) - len(split(one)[3]) - 1],
    )

    # ---- negative vectors: header syntax, each with a VALID header MAC ---------------------
    odek = bytes.fromhex(b.positive["one-byte"]["dek"])
    ononce = bytes.fromhex(b.positive["one-byte"]["nonce"])
    _, omac_key = derive(odek, ononce)
    opayload = split(one)[3]
    orec = split(one)[1][4 + 16 + 2 + 2 :]  # the single recipient's bytes (empty context)
    memrec = raw_recipient(
        b"memory",
        MEMORY_KEY_ID.encode(),
        b"AES-256-GCM",
        [],
        bytes.fromhex(b.positive["one-byte"]["recipients"][0]["wrapped"]),
    )
    assert orec == memrec

    def with_body(**kw: Any) -> bytes:
        args: dict[str, Any] = {
            "chunk_size": 64,
            "nonce": ononce,
            "context": [],
            "recipients": [memrec],
        }
        args.update(kw)
        return seal_raw_body(raw_body(**args), omac_key, opayload)

    b.bad(
        "chunk-size-below-minimum",
        "Chunk size 15 (minimum 16); MAC valid.",
        "malformed",
        "one-byte",
        with_body(chunk_size=15),
    )
    b.bad(
        "chunk-size-above-maximum",
        "Chunk size 16 MiB + 1 (maximum 16 MiB); MAC valid.",
        "malformed",
        "one-byte",
        with_body(chunk_size=(1 << 24) + 1),
    )
    b.bad(
        "context-unsorted",
        "Context keys 'b' then 'a' (must be sorted); MAC valid.",
        "malformed",
        "one-byte",
        with_body(context=[(b"b", b"2"), (b"a", b"1")]),
    )
    b.bad(
        "context-duplicate-key",
        "Context key 'a' twice; MAC valid.",
        "malformed",
        "one-byte",
        with_body(context=[(b"a", b"1"), (b"a", b"1")]),
    )
    b.bad(
        "context-empty-key",
        "An empty context key; MAC valid.",
        "malformed",
        "one-byte",
        with_body(context=[(b"", b"x")]),
    )
    b.bad(
        "context-invalid-utf8",
        "A context value that is not UTF-8 (0xff); MAC valid.",
        "malformed",
        "one-byte",
        with_body(context=[(b"a", b"\xff")]),
    )
    b.bad(
        "too-many-context-entries",
        "257 context entries (limit 256); MAC valid.",
        "malformed",
        "one-byte",
        with_body(context=[(f"k{i:03d}".encode(), b"") for i in range(257)]),
    )
    b.bad(
        "no-recipients",
        "Recipient count 0; MAC valid.",
        "malformed",
        "one-byte",
        with_body(recipients=[]),
    )
    b.bad(
        "too-many-recipients",
        "65 recipients (limit 64); MAC valid.",
        "malformed",
        "one-byte",
        with_body(recipients=[memrec] * 65),
    )
    b.bad(
        "provider-scheme-mismatch",
        "Provider 'local' but key id 'memory:vectors'; MAC valid.",
        "malformed",
        "one-byte",
        with_body(recipients=[raw_recipient(b"local", b"memory:vectors", b"AES-256-GCM", [], b"")]),
    )
    b.bad(
        "key-id-without-scheme",
        "Key id 'vectors' has no URI scheme; MAC valid.",
        "malformed",
        "one-byte",
        with_body(recipients=[raw_recipient(b"memory", b"vectors", b"AES-256-GCM", [], b"")]),
    )
    b.bad(
        "empty-algorithm",
        "An empty algorithm name; MAC valid.",
        "malformed",
        "one-byte",
        with_body(recipients=[raw_recipient(b"memory", b"memory:vectors", b"", [], b"")]),
    )
    b.bad(
        "non-ascii-algorithm",
        "Algorithm name with a non-ASCII byte; MAC valid.",
        "malformed",
        "one-byte",
        with_body(
            recipients=[raw_recipient(b"memory", b"memory:vectors", b"AES-\xc3\xa9", [], b"")]
        ),
    )
    b.bad(
        "params-unsorted",
        "Recipient params 'b' then 'a' (must be sorted by name); MAC "
        "valid over the bytes as written.",
        "malformed",
        "one-byte",
        with_body(
            recipients=[
                raw_recipient(
                    b"memory", b"memory:vectors", b"AES-256-GCM", [(b"b", b"2"), (b"a", b"1")], b""
                )
            ]
        ),
    )
    two = bytes.fromhex(b.positive["two-recipients-with-params"]["envelope"])
    p_origin = str8(b"Origin") + str16(b"hsm")
    p_version = str8(b"key-version") + str16(b"3")
    assert two.count(p_origin + p_version) == 1
    b.bad(
        "params-reordered-after-mac",
        "Two params of the first recipient swapped in place "
        "AFTER the MAC was computed over the sorted encoding. A reader that re-sorts before "
        "checking the MAC would accept it; the parse rule (and a MAC over the bytes as "
        "received) rejects it.",
        "malformed",
        "two-recipients-with-params",
        two.replace(p_origin + p_version, p_version + p_origin),
    )
    b.bad(
        "params-duplicate-name",
        "Recipient param 'a' twice; MAC valid.",
        "malformed",
        "one-byte",
        with_body(
            recipients=[
                raw_recipient(
                    b"memory", b"memory:vectors", b"AES-256-GCM", [(b"a", b"1"), (b"a", b"1")], b""
                )
            ]
        ),
    )
    b.bad(
        "header-trailing-bytes",
        "One extra byte at the end of the header body (counted by the length field); MAC valid.",
        "malformed",
        "one-byte",
        with_body(trailing=b"\x00"),
    )
    b.bad(
        "header-body-short",
        "Recipient count says 2 but only one recipient follows; MAC valid.",
        "malformed",
        "one-byte",
        seal_raw_body(
            raw_body(64, ononce, [], [memrec])[: -len(memrec) - 2] + struct.pack(">H", 2) + memrec,
            omac_key,
            opayload,
        ),
    )

    # ---- negative vectors: the compact encoding ----------------------------------------------
    good = b.positive["one-byte"]["compact"]
    text = good[len("kmsenv1.") :]
    assert len(text) % 4 != 0
    b.bad(
        "compact-padded",
        "Compact form with '=' padding (must be unpadded).",
        "malformed",
        "one-byte",
        None,
        compact=good + "=" * (-len(text) % 4),
    )
    first_urlsafe = next(i for i, c in enumerate(text) if c in "-_")
    std = (
        "kmsenv1."
        + text[:first_urlsafe]
        + {"-": "+", "_": "/"}[text[first_urlsafe]]
        + text[first_urlsafe + 1 :]
    )
    b.bad(
        "compact-standard-alphabet",
        "Compact form using the standard base64 alphabet ('+' or '/') instead of base64url.",
        "malformed",
        "one-byte",
        None,
        compact=std,
    )
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1])
    unused_bits = {2: 4, 3: 2}[len(text) % 4]
    assert last % (1 << unused_bits) == 0
    b.bad(
        "compact-noncanonical",
        "Compact form whose last character has non-zero unused "
        "bits (decodes to the same bytes under a lax decoder).",
        "malformed",
        "one-byte",
        None,
        compact=good[:-1] + alphabet[last + 1],
    )
    b.bad(
        "compact-bad-length",
        "Compact text whose base64 length is 1 mod 4.",
        "malformed",
        "one-byte",
        None,
        compact="kmsenv1." + text[: len(text) - len(text) % 4] + "A",
    )
    b.bad(
        "compact-missing-prefix",
        "Base64url of a valid envelope without the 'kmsenv1.' prefix.",
        "malformed",
        "one-byte",
        None,
        compact=text,
    )

    # Double-check every positive vector round-trips here, so a broken generator never writes.
    for vec in b.positive.values():
        env = bytes.fromhex(vec["envelope"])
        assert hazmat.open_with_dek(env, bytes.fromhex(vec["dek"])) == bytes.fromhex(
            vec["plaintext"]
        )

    return {
        "format": "kmsenvelope format v1",
        "spec": "docs/format.md",
        "generator": "tests/vectors/generate.py",
        "notes": (
            "All byte strings are lowercase hex except 'compact'. 'expected' is 'ok' (open with "
            "'dek' to get 'plaintext'), 'authentication' or 'malformed' (docs/format.md section "
            "10). For negative vectors, 'base' names the positive vector they were derived "
            "from, and dek/nonce/chunk_size/context/recipients are copied from it; 'envelope' is "
            "null when only the compact text is under test. The 'example-kms' wrapped key is "
            "opaque filler that no reader can unwrap."
        ),
        "test_keks": {
            MEMORY_KEY_ID: {
                "provider": "memory",
                "algorithm": "AES-256-GCM",
                "key": MEMORY_KEK.hex(),
            },
            LOCAL_KEY_ID: {
                "provider": "local",
                "algorithm": "AES-256-GCM",
                "key": LOCAL_KEK.hex(),
            },
        },
        "vectors": b.vectors,
    }


def render(doc: dict[str, Any] | None = None) -> str:
    """The exact text of v1.json."""
    return json.dumps(build() if doc is None else doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
