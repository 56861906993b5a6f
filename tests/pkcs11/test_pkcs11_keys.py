"""Creating wrapping keys: create_key(), and the commands docs/providers/pkcs11.md shows."""

from __future__ import annotations

import os
import shutil
import subprocess

import pkcs11
import pytest
from pkcs11 import Attribute as A

from kmsenvelope import ConfigError
from kmsenvelope.errors import AccessDeniedError, KeyNotFoundError
from kmsenvelope_pkcs11 import close_all, create_key, create_key_at, open_key, parse_uri
from kmsenvelope_pkcs11.pool import LOCK


def attributes(softhsm, object_class, label, names):
    """Read attributes straight from the token (the pool's login is shared by this session)."""
    with LOCK:
        token = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.token)
        with token.open() as session:
            (obj,) = session.get_objects({A.CLASS: object_class, A.LABEL: label})
            return {name: obj[name] for name in names}


PROTECTED = [
    A.TOKEN,
    A.PRIVATE,
    A.SENSITIVE,
    A.EXTRACTABLE,
    A.ALWAYS_SENSITIVE,
    A.NEVER_EXTRACTABLE,
]


def test_aes_key_is_persistent_sensitive_and_non_extractable(softhsm):
    uri = create_key(
        softhsm.module, softhsm.token, softhsm.pin, "aes-new", "aes256", key_id=b"\x11"
    )
    assert uri == "pkcs11:token=kmsenv-test;object=aes-new;id=%11"
    attrs = attributes(
        softhsm,
        pkcs11.ObjectClass.SECRET_KEY,
        "aes-new",
        [*PROTECTED, A.VALUE_LEN, A.ENCRYPT, A.DECRYPT, A.WRAP, A.UNWRAP, A.SIGN],
    )
    assert attrs == {
        A.TOKEN: True,
        A.PRIVATE: True,
        A.SENSITIVE: True,
        A.EXTRACTABLE: False,
        A.ALWAYS_SENSITIVE: True,
        A.NEVER_EXTRACTABLE: True,
        A.VALUE_LEN: 32,
        A.ENCRYPT: True,
        A.DECRYPT: True,
        A.WRAP: True,
        A.UNWRAP: True,
        A.SIGN: False,
    }
    kek = open_key(uri, softhsm.settings())
    assert kek.unwrap(kek.wrap(b"k" * 32, {}), {}) == b"k" * 32


def test_rsa_private_key_is_sensitive_and_non_extractable(softhsm):
    uri = create_key(softhsm.module, softhsm.token, softhsm.pin, "rsa-new", "rsa2048")
    key_id = parse_uri(uri).id
    assert key_id is not None
    assert len(key_id) == 8  # random CKA_ID
    private = attributes(
        softhsm,
        pkcs11.ObjectClass.PRIVATE_KEY,
        "rsa-new",
        [*PROTECTED, A.DECRYPT, A.UNWRAP, A.SIGN],
    )
    assert private == {
        A.TOKEN: True,
        A.PRIVATE: True,
        A.SENSITIVE: True,
        A.EXTRACTABLE: False,
        A.ALWAYS_SENSITIVE: True,
        A.NEVER_EXTRACTABLE: True,
        A.DECRYPT: True,
        A.UNWRAP: True,
        A.SIGN: False,
    }
    public = attributes(
        softhsm,
        pkcs11.ObjectClass.PUBLIC_KEY,
        "rsa-new",
        [A.TOKEN, A.ENCRYPT, A.WRAP, A.VERIFY, A.MODULUS_BITS],
    )
    assert public == {
        A.TOKEN: True,
        A.ENCRYPT: True,
        A.WRAP: True,
        A.VERIFY: False,
        A.MODULUS_BITS: 2048,
    }


def test_keys_survive_a_new_login(softhsm):
    uri = create_key(softhsm.module, softhsm.token, softhsm.pin, "persistent")
    wrapped = open_key(uri, softhsm.settings()).wrap(b"k" * 32, {})
    close_all()
    assert open_key(uri, softhsm.settings()).unwrap(wrapped, {}) == b"k" * 32


def test_label_already_taken(softhsm):
    create_key(softhsm.module, softhsm.token, softhsm.pin, "taken")
    with pytest.raises(ConfigError, match="already has an object labelled 'taken'"):
        create_key(softhsm.module, softhsm.token, softhsm.pin, "taken", "rsa2048")


def test_unknown_key_type_and_empty_label(softhsm):
    with pytest.raises(ConfigError, match="unknown key type 'des3'"):
        create_key(softhsm.module, softhsm.token, softhsm.pin, "k", "des3")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="label is required"):
        create_key(softhsm.module, softhsm.token, softhsm.pin, "")


def test_create_key_wrong_pin_and_missing_token(softhsm):
    with pytest.raises(AccessDeniedError, match="CKR_PIN_INCORRECT"):
        create_key(softhsm.module, softhsm.token, "bad-pin", "k")
    with pytest.raises(KeyNotFoundError, match="no initialized token labelled 'nope'"):
        create_key(softhsm.module, "nope", softhsm.pin, "k")


def test_create_key_module_missing(softhsm_bare, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        create_key(str(tmp_path / "missing.so"), "t", "p", "k")


def test_documented_pkcs11_tool_commands_make_usable_keys(softhsm):
    """The commands in docs/providers/pkcs11.md, as written, against the test token."""
    if shutil.which("pkcs11-tool") is None:
        if os.environ.get("CI"):
            pytest.fail("opensc must be installed in CI (.ci/run: apt-get install opensc)")
        pytest.skip(
            "pkcs11-tool (Debian package opensc) is not installed: nox -s tests installs it"
        )
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm.conf)}
    login = [
        "--module",
        softhsm.module,
        "--token-label",
        softhsm.token,
        "--login",
        "--pin",
        softhsm.pin,
    ]
    flags = ["--sensitive", "--private", "--usage-decrypt", "--usage-wrap"]
    aes = ["--keygen", "--key-type", "AES:32", "--label", "wrapping-key", "--id", "01"]
    rsa = ["--keypairgen", "--key-type", "rsa:3072", "--label", "wrapping-rsa", "--id", "02"]
    for command in (aes, rsa):
        subprocess.run(
            ["pkcs11-tool", *login, *command, *flags],
            check=True,
            capture_output=True,
            env=env,
            timeout=120,
        )
    close_all()
    dek = os.urandom(32)
    for uri, extra, cka_id in [
        ("pkcs11:token=kmsenv-test;object=wrapping-key", {}, "%01"),
        ("pkcs11:token=kmsenv-test;object=wrapping-key", {"aes_mechanism": "kwp"}, "%01"),
        ("pkcs11:token=kmsenv-test;object=wrapping-rsa", {"oaep_hash": "sha1"}, "%02"),
    ]:
        kek = open_key(uri, softhsm.settings(**extra))
        wrapped = kek.wrap(dek, {"a": "b"})
        assert wrapped.key_id == f"{uri};id={cka_id}"
        assert kek.unwrap(wrapped, {"a": "b"}) == dek
    attrs = attributes(softhsm, pkcs11.ObjectClass.SECRET_KEY, "wrapping-key", PROTECTED)
    assert attrs[A.SENSITIVE] is True
    assert attrs[A.EXTRACTABLE] is False
    assert attrs[A.NEVER_EXTRACTABLE] is True


def test_create_key_at_uses_the_provider_settings(softhsm):
    uri = create_key_at("pkcs11:object=from-uri;id=%AB", softhsm.settings(), "aes128")
    assert uri == "pkcs11:token=kmsenv-test;object=from-uri;id=%AB"
    kek = open_key(uri, softhsm.settings())
    wrapped = kek.wrap(b"k" * 32, {"a": "b"})
    assert wrapped.algorithm == "AES-128-GCM"
    assert kek.unwrap(wrapped, {"a": "b"}) == b"k" * 32


def test_create_key_at_cloudhsm_preset(softhsm_bare, monkeypatch):
    softhsm_bare.init_token("hsm1", "cu:pw-1234")
    monkeypatch.setenv("CLOUDHSM_PIN", "cu:pw-1234")
    uri = create_key_at("aws-cloudhsm:object=cu-key", {"module": softhsm_bare.module}, "rsa2048")
    assert uri.startswith("aws-cloudhsm:token=hsm1;object=cu-key;id=")


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("local:k", "not a PKCS#11 key URI"),
        ("pkcs11:id=%01", "name the new key with object=LABEL"),
        ("pkcs11:object=k?pin-value=1", "PIN may not be given"),
    ],
)
def test_create_key_at_rejects_bad_uris(softhsm, uri, match):
    with pytest.raises(ConfigError, match=match):
        create_key_at(uri, softhsm.settings())
