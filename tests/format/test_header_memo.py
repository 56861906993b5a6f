"""The parser and writer remember contexts and recipient heads by their exact bytes (issue 17):
headers that repeat them, many that do not (past the memo's bound), and malformed ones that
differ from a remembered one by a byte all parse exactly as written, or fail as before."""

from __future__ import annotations

import hmac
import os
import random

import pytest

from kmsenvelope.errors import MalformedEnvelopeError
from kmsenvelope.format.header import (
    Header,
    encode_new_header,
    header_fields,
    new_header,
    parse_header,
)
from kmsenvelope.format.keyschedule import hmac_sha256
from kmsenvelope.kek import WrappedKey


def envelope_header(header: Header) -> bytes:
    """The header's bytes with some MAC, and no payload (enough for the parser)."""
    return header.encode(os.urandom(32))


def make(rng: random.Random, keys: int, contexts: int) -> Header:
    key = rng.randrange(keys)
    context = {} if rng.random() < 0.3 else {"tenant": f"t{rng.randrange(contexts)}", "app": "x"}
    recipients = [
        WrappedKey("memory", f"memory:key-{key}", "AES-256-GCM", os.urandom(rng.choice((44, 60)))),
    ]
    if rng.random() < 0.3:
        recipients.append(
            WrappedKey(
                "aws-kms",
                f"aws-kms:alias/k{key}",
                "SYMMETRIC_DEFAULT",
                os.urandom(150),
                {"region": "eu-west-1"},
            )
        )
    return new_header(1 << 20, os.urandom(16), context, recipients)


def test_repeated_and_many_fields_parse_as_written() -> None:
    rng = random.Random(17)
    for _ in range(3000):  # 600 key ids, 400 contexts: the memos fill up and start again
        header = make(rng, 600, 400)
        blob = envelope_header(header)
        parsed, size = parse_header(blob)
        assert size == len(blob)
        assert (parsed.chunk_size, parsed.nonce, dict(parsed.context), parsed.recipients) == (
            header.chunk_size,
            header.nonce,
            dict(header.context),
            header.recipients,
        )
        assert [dict(r.params) for r in parsed.recipients] == [
            dict(r.params) for r in header.recipients
        ]
        fields = header_fields(blob)
        assert fields[:4] == (parsed.chunk_size, parsed.nonce, parsed.context, parsed.recipients)
        assert fields[4:] == (parsed.mac, parsed.raw, size)


def test_encoding_with_remembered_heads_is_byte_for_byte_the_same() -> None:
    rng = random.Random(6)
    for _ in range(2000):
        header = make(rng, 300, 50)
        again = encode_new_header(
            header.chunk_size, header.nonce, header.context, header.recipients
        )
        assert (
            again
            == header.authenticated_bytes()
            == Header(
                header.chunk_size, header.nonce, header.context, header.recipients
            ).authenticated_bytes()
        )


def test_a_byte_changed_in_a_remembered_head_is_still_caught() -> None:
    wrapped = WrappedKey("memory", "memory:remembered", "AES-256-GCM", os.urandom(44))
    header = new_header(1 << 20, os.urandom(16), {"k": "v"}, [wrapped])
    blob = envelope_header(header)
    parse_header(blob)  # remembered now
    assert parse_header(blob)[0] == parse_header(blob)[0]
    at = blob.index(b"memory:remembered")
    wrong_scheme = blob[:at] + b"xemory" + blob[at + 6 :]
    with pytest.raises(MalformedEnvelopeError, match="recipient is malformed"):
        parse_header(wrong_scheme)
    ctx_at = blob.index(b"\x00\x01k\x00\x01v")
    unsorted = blob[:ctx_at] + b"\x00\x00k" + blob[ctx_at + 3 :]  # an empty context key
    with pytest.raises(MalformedEnvelopeError):
        parse_header(unsorted)
    bad_utf8 = blob[:at] + b"memory:\xff" + blob[at + 8 :]
    with pytest.raises(MalformedEnvelopeError, match="invalid key id"):
        parse_header(bad_utf8)
    assert parse_header(blob)[0].recipients == (wrapped,)  # the original still parses


def test_writer_checks_are_not_skipped_for_unchecked_recipients() -> None:
    good = WrappedKey("memory", "memory:w", "AES-256-GCM", os.urandom(44))
    encode_new_header(1 << 20, os.urandom(16), {}, [good])
    encode_new_header(1 << 20, os.urandom(16), {}, [good])  # from the remembered head
    with pytest.raises(ValueError, match="does not use scheme"):
        encode_new_header(1 << 20, os.urandom(16), {}, [WrappedKey("other", "memory:w", "A", b"x")])
    with pytest.raises(ValueError, match="chunk_size"):
        encode_new_header(8, os.urandom(16), {}, [good])
    with pytest.raises(ValueError, match="65535"):
        encode_new_header(
            1 << 20,
            os.urandom(16),
            {},
            [WrappedKey("memory", "memory:w", "AES-256-GCM", bytes(70000))],
        )
    key = os.urandom(32)  # the 32-byte-key shortcut of the MAC is plain HMAC-SHA256
    assert hmac_sha256(key, b"m") == hmac.digest(key, b"m", "sha256")
