"""RFC 7512 key URIs: parsing, the canonical form, and what a URI may never carry."""

from __future__ import annotations

import pytest

from kmsenvelope import ConfigError
from kmsenvelope_pkcs11 import Pkcs11Uri, parse_uri


def test_parse_token_object_id_type():
    uri = parse_uri("pkcs11:token=My%20Token;object=wrap-key;id=%01%02;type=secret-key")
    assert uri == Pkcs11Uri(
        "pkcs11", token="My Token", object="wrap-key", id=b"\x01\x02", type="secret-key"
    )


def test_canonical_form_percent_encodes_id_and_special_characters():
    uri = Pkcs11Uri("pkcs11", token="T;1", object="a b/c", id=b"\x01\xff")
    assert str(uri) == "pkcs11:token=T%3B1;object=a%20b%2Fc;id=%01%FF"
    assert parse_uri(str(uri)) == uri


def test_round_trip_utf8_label():
    uri = parse_uri("pkcs11:token=T;object=cl%C3%A9")
    assert uri.object == "clé"
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize("value", ["private", "private-key"])
def test_private_key_type_spellings(value):
    assert parse_uri(f"pkcs11:object=k;type={value}").type == "private"


def test_with_key_records_token_label_and_id_not_type():
    uri = parse_uri("pkcs11:object=k;type=secret-key")
    recorded = uri.with_key(token="T", object_label="k", key_id=b"\x07")
    assert str(recorded) == "pkcs11:token=T;object=k;id=%07"


def test_other_scheme():
    uri = parse_uri("aws-cloudhsm:object=k", "aws-cloudhsm")
    assert str(uri) == "aws-cloudhsm:object=k"


@pytest.mark.parametrize(
    "query", ["pin-value=1234", "pin-source=file:/etc/pin", "x=1&pin-value=secret"]
)
def test_pin_in_uri_is_rejected_without_echoing_it(query):
    with pytest.raises(ConfigError) as info:
        parse_uri(f"pkcs11:token=T;object=k?{query}")
    message = str(info.value)
    assert "PIN may not be given in the key URI" in message
    assert "[providers.pkcs11]" in message
    assert "1234" not in message
    assert "secret" not in message


@pytest.mark.parametrize("query", ["module-path=/tmp/evil.so", "module-name=evil"])
def test_module_in_uri_is_rejected(query):
    with pytest.raises(ConfigError, match="module may not be chosen by the key URI"):
        parse_uri(f"pkcs11:token=T;object=k?{query}")


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("pkcs11:token=T", "name the key with object=LABEL and/or id="),
        ("pkcs11:", "name the key"),
        ("pkcs11:object=k;slot-id=1", "unsupported attribute 'slot-id'"),
        ("pkcs11:object=k;object=j", "attribute 'object' is repeated"),
        ("pkcs11:object=%zz", "malformed %-escape"),
        ("pkcs11:object=%C3", "not UTF-8"),
        ("pkcs11:object=", "attribute 'object' is empty"),
        ("pkcs11:id=", "attribute 'id' is empty"),
        ("pkcs11:object=k;type=cert", "cannot wrap keys"),
        ("pkcs11:object", "expected attr=value"),
        ("pkcs11:object=k?foo=bar", "unsupported query attributes"),
        ("local:k", "not a pkcs11: URI"),
        ("pkcs11:object=k\n", r"must be percent-encoded: '\\n' \(write %0A\)"),
        ("pkcs11:object=my key", r"must be percent-encoded: ' ' \(write %20\)"),
        ("pkcs11:token=a/b;object=k", "must be percent-encoded"),
    ],
)
def test_malformed_uris(uri, match):
    with pytest.raises(ConfigError, match=match):
        parse_uri(uri)
