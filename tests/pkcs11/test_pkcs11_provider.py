"""The PKCS#11 KEK against a real SoftHSM2 token: round trips and every failure path."""

from __future__ import annotations

import logging
import os

import pytest

from kmsenvelope import ConfigError, ProviderError, ProviderUnavailableError, WrappedKey
from kmsenvelope.errors import AccessDeniedError, KeyNotFoundError, UnwrapError
from kmsenvelope_pkcs11 import close_all, open_key, parse_uri

CONTEXT = {"tenant": "t-1", "purpose": "test"}


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def with_ciphertext(w: WrappedKey, ciphertext: bytes) -> WrappedKey:
    return WrappedKey(w.provider, w.key_id, w.algorithm, ciphertext, w.params)


# -- round trips --------------------------------------------------------------------------------


def test_aes_gcm_round_trip(softhsm, aes_uri):
    kek = open_key("pkcs11:token=kmsenv-test;object=aes-wrap", softhsm.settings())
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, CONTEXT)
    assert wrapped.provider == "pkcs11"
    assert wrapped.algorithm == "AES-256-GCM"
    assert wrapped.params == {"aad": "context-v1"}
    assert len(wrapped.ciphertext) == 12 + 32 + 16
    assert kek.unwrap(wrapped, CONTEXT) == dek


def test_aes_kwp_round_trip(softhsm, aes_uri):
    kek = open_key(aes_uri, softhsm.settings(aes_mechanism="kwp"))
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, CONTEXT)
    assert wrapped.algorithm == "AES-KWP"
    assert wrapped.params == {"mechanism": "0x210a"}
    assert len(wrapped.ciphertext) == 40  # RFC 5649: 32 bytes + 8-byte integrity block
    assert kek.unwrap(wrapped, CONTEXT) == dek


def import_known_aes_key(softhsm, label: str) -> bytes:
    """Put an AES key whose value the test knows into the token (test-only: extractable)."""
    import pkcs11
    from pkcs11 import Attribute as A

    from kmsenvelope_pkcs11.pool import LOCK

    value = os.urandom(32)
    with LOCK:
        token = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.token)
        with token.open(rw=True, user_pin=softhsm.pin) as session:
            session.create_object(
                {
                    A.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                    A.KEY_TYPE: pkcs11.KeyType.AES,
                    A.TOKEN: True,
                    A.PRIVATE: True,
                    A.LABEL: label,
                    A.ID: b"\x42",
                    A.VALUE: value,
                    A.ENCRYPT: True,
                    A.DECRYPT: True,
                    A.WRAP: True,
                    A.UNWRAP: True,
                    A.SENSITIVE: False,
                    A.EXTRACTABLE: True,
                }
            )
    return value


def test_blobs_are_standard_aes_gcm_and_rfc5649(softhsm):
    """Interop: what the HSM produced opens with pyca/cryptography, as docs/providers/pkcs11.md
    describes (GCM: IV || ciphertext || tag, AAD = label || canonical context; KWP: RFC 5649)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

    from kmsenvelope.format.header import encode_context

    key = import_known_aes_key(softhsm, "known")
    dek = os.urandom(32)
    gcm = open_key("pkcs11:object=known", softhsm.settings()).wrap(dek, CONTEXT)
    aad = b"kmsenvelope-pkcs11/v1\x00" + encode_context(CONTEXT)
    blob = gcm.ciphertext
    assert AESGCM(key).decrypt(blob[:12], blob[12:], aad) == dek
    kwp = open_key("pkcs11:object=known", softhsm.settings(aes_mechanism="kwp")).wrap(dek, {})
    assert aes_key_unwrap_with_padding(key, kwp.ciphertext) == dek


def test_rsa_oaep_sha1_round_trip(softhsm, rsa_uri):
    kek = open_key(
        "pkcs11:token=kmsenv-test;object=rsa-wrap;type=private", softhsm.settings(oaep_hash="sha1")
    )
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, CONTEXT)
    assert wrapped.algorithm == "RSA-OAEP-SHA1"
    assert wrapped.params == {"mgf": "mgf1-sha1"}
    assert len(wrapped.ciphertext) == 256
    assert kek.unwrap(wrapped, CONTEXT) == dek


def test_unwrap_accepts_either_aes_algorithm_whatever_is_configured(softhsm, aes_uri):
    gcm = open_key(aes_uri, softhsm.settings())
    kwp = open_key(aes_uri, softhsm.settings(aes_mechanism="kwp"))
    dek = os.urandom(32)
    assert kwp.unwrap(gcm.wrap(dek, CONTEXT), CONTEXT) == dek
    assert gcm.unwrap(kwp.wrap(dek, CONTEXT), CONTEXT) == dek


def test_unwrap_with_recorded_oaep_hash(softhsm, rsa_uri):
    """An envelope wrapped with SHA-1 still opens after oaep_hash is changed."""
    wrapped = open_key(rsa_uri, softhsm.settings(oaep_hash="sha1")).wrap(b"k" * 32, {})
    assert open_key(rsa_uri, softhsm.settings(oaep_hash="sha512")).unwrap(wrapped, {}) == b"k" * 32


# -- what the envelope records -----------------------------------------------------------------


def test_key_id_records_token_object_and_cka_id_not_the_pin(softhsm, aes_uri):
    kek = open_key("pkcs11:object=aes-wrap", softhsm.settings())
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    assert wrapped.key_id == "pkcs11:token=kmsenv-test;object=aes-wrap;id=%01%02"
    assert wrapped.key_id == aes_uri
    assert softhsm.pin not in wrapped.key_id
    assert softhsm.pin.encode() not in wrapped.ciphertext
    assert softhsm.pin not in repr(wrapped)
    assert kek.key_id == "pkcs11:object=aes-wrap"  # the URI it was opened with


def test_key_found_by_id_alone_records_its_label(softhsm, aes_uri):
    wrapped = open_key("pkcs11:id=%01%02", softhsm.settings()).wrap(os.urandom(32), {})
    assert parse_uri(wrapped.key_id).object == "aes-wrap"


def test_recorded_key_id_reopens_the_key(softhsm, rsa_uri):
    kek = open_key("pkcs11:object=rsa-wrap", softhsm.settings(oaep_hash="sha1"))
    dek = os.urandom(32)
    wrapped = kek.wrap(dek, {})
    assert wrapped.key_id == "pkcs11:token=kmsenv-test;object=rsa-wrap;id=%0A%0B"
    assert open_key(wrapped.key_id, softhsm.settings(oaep_hash="sha1")).unwrap(wrapped, {}) == dek


def test_pin_never_in_logs_reprs_or_errors(softhsm, aes_uri, caplog):
    caplog.set_level(logging.DEBUG)
    kek = open_key(aes_uri, softhsm.settings())
    kek.unwrap(kek.wrap(os.urandom(32), CONTEXT), CONTEXT)
    errors = []
    close_all()  # the first bad PIN goes to the token (C_Login), the second to the pool
    for bad in ("wrong-pin-1", softhsm.pin + "x"):
        try:
            open_key(aes_uri, softhsm.settings(pin=bad)).wrap(b"k" * 32, {})
        except AccessDeniedError as exc:
            errors.append(exc)
        kek.wrap(b"k" * 32, {})  # logs in again with the good PIN
    assert len(errors) == 2
    assert "CKR_PIN_INCORRECT" in str(errors[0])
    assert "different PIN" in str(errors[1])
    assert caplog.records, "the provider logs at DEBUG"
    texts = [caplog.text, repr(kek), str(kek), repr(kek.settings), *map(str, errors)]
    for text in texts:
        assert softhsm.pin not in text
        assert "wrong-pin-1" not in text


# -- failure paths -----------------------------------------------------------------------------


def test_wrong_pin_is_access_denied(softhsm, aes_uri):
    close_all()  # log out: creating the key logged this process in
    kek = open_key(aes_uri, softhsm.settings(pin="not-the-pin"))
    with pytest.raises(AccessDeniedError) as info:
        kek.wrap(os.urandom(32), {})
    assert "the PIN was rejected (CKR_PIN_INCORRECT)" in str(info.value)
    assert "check setting 'pin' in [providers.pkcs11]" in str(info.value)


def test_wrong_pin_from_the_environment_names_the_variable(softhsm, aes_uri, monkeypatch):
    wrapped = open_key(aes_uri, softhsm.settings()).wrap(b"k" * 32, {})
    close_all()
    monkeypatch.setenv("KMSENVELOPE_PKCS11_PIN", "not-the-pin")
    kek = open_key(aes_uri, {"module": softhsm.module})
    with pytest.raises(
        AccessDeniedError, match="check environment variable KMSENVELOPE_PKCS11_PIN"
    ):
        kek.unwrap(wrapped, {})


def test_wrong_pin_after_a_good_login_is_still_refused(softhsm, aes_uri):
    good = open_key(aes_uri, softhsm.settings())
    good.wrap(os.urandom(32), {})  # the process is now logged in to the token
    bad = open_key(aes_uri, softhsm.settings(pin="not-the-pin"))
    with pytest.raises(AccessDeniedError, match="different PIN"):
        bad.wrap(os.urandom(32), {})
    good.wrap(os.urandom(32), {})  # and the good login is untouched


def test_missing_token_is_key_not_found_naming_the_label(softhsm, aes_uri):
    kek = open_key("pkcs11:token=no-such-token;object=aes-wrap", softhsm.settings())
    with pytest.raises(KeyNotFoundError) as info:
        kek.wrap(os.urandom(32), {})
    message = str(info.value)
    assert "no initialized token labelled 'no-such-token'" in message
    assert "'kmsenv-test'" in message  # what is there


def test_missing_object_is_key_not_found(softhsm, aes_uri):
    kek = open_key("pkcs11:token=kmsenv-test;object=no-such-key", softhsm.settings())
    with pytest.raises(KeyNotFoundError, match="no-such-key: no such key in token 'kmsenv-test'"):
        kek.wrap(os.urandom(32), {})


def test_wrong_type_is_key_not_found(softhsm, aes_uri):
    kek = open_key("pkcs11:object=aes-wrap;type=private", softhsm.settings())
    with pytest.raises(KeyNotFoundError):
        kek.wrap(os.urandom(32), {})


def test_missing_object_when_unwrapping(softhsm, aes_uri):
    wrapped = open_key(aes_uri, softhsm.settings()).wrap(os.urandom(32), {})
    with pytest.raises(KeyNotFoundError):
        open_key("pkcs11:object=gone", softhsm.settings()).unwrap(wrapped, {})


@pytest.mark.parametrize("mode", ["gcm", "kwp"])
def test_tampered_aes_blob_is_unwrap_error(softhsm, aes_uri, mode):
    kek = open_key(aes_uri, softhsm.settings(aes_mechanism=mode))
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    ct = wrapped.ciphertext
    for bad in (flip(ct, 0), flip(ct, len(ct) // 2), flip(ct, len(ct) - 1), ct[:-8], ct[:8]):
        with pytest.raises(UnwrapError):
            kek.unwrap(with_ciphertext(wrapped, bad), CONTEXT)


def test_tampered_rsa_blob_is_unwrap_error(softhsm, rsa_uri):
    kek = open_key(rsa_uri, softhsm.settings(oaep_hash="sha1"))
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    for bad in (
        flip(wrapped.ciphertext, 0),
        flip(wrapped.ciphertext, 255),
        wrapped.ciphertext[:128],
    ):
        with pytest.raises(UnwrapError, match="rejected"):
            kek.unwrap(with_ciphertext(wrapped, bad), CONTEXT)


def test_wrong_context_is_unwrap_error_for_gcm(softhsm, aes_uri):
    kek = open_key(aes_uri, softhsm.settings())
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    for other in ({**CONTEXT, "tenant": "t-2"}, {}, {**CONTEXT, "extra": "x"}):
        with pytest.raises(UnwrapError, match="another encryption context"):
            kek.unwrap(wrapped, other)


def test_kwp_and_rsa_do_not_bind_context(softhsm, aes_uri, rsa_uri):
    """Documented: only GCM binds the context; the envelope's header MAC binds it for the rest."""
    dek = os.urandom(32)
    kwp = open_key(aes_uri, softhsm.settings(aes_mechanism="kwp"))
    assert kwp.unwrap(kwp.wrap(dek, CONTEXT), {"other": "context"}) == dek
    rsa = open_key(rsa_uri, softhsm.settings(oaep_hash="sha1"))
    assert rsa.unwrap(rsa.wrap(dek, CONTEXT), {"other": "context"}) == dek


def test_rsa_oaep_sha256_unsupported_by_softhsm_names_the_setting(softhsm, rsa_uri):
    kek = open_key(rsa_uri, softhsm.settings())  # oaep_hash defaults to sha256
    with pytest.raises(ProviderError) as info:
        kek.wrap(os.urandom(32), {})
    assert type(info.value) is ProviderError
    message = str(info.value)
    assert "RSA-OAEP with SHA256" in message
    assert "'oaep_hash' in [providers.pkcs11]" in message
    assert 'oaep_hash = "sha1"' in message


def test_unwrapping_an_unsupported_oaep_hash_is_a_clear_error(softhsm, rsa_uri):
    wrapped = open_key(rsa_uri, softhsm.settings(oaep_hash="sha1")).wrap(b"k" * 32, {})
    forged = WrappedKey("pkcs11", wrapped.key_id, "RSA-OAEP-SHA256", wrapped.ciphertext)
    with pytest.raises(ProviderError, match="cannot decrypt RSA-OAEP-SHA256"):
        open_key(rsa_uri, softhsm.settings(oaep_hash="sha1")).unwrap(forged, {})


def test_unsupported_kwp_mechanism_names_the_setting(softhsm, aes_uri):
    kek = open_key(aes_uri, softhsm.settings(aes_mechanism="kwp", kwp_mechanism=0x8000216F))
    with pytest.raises(ProviderError) as info:
        kek.wrap(os.urandom(32), {})
    message = str(info.value)
    assert "CKR_MECHANISM_INVALID" in message
    assert "'kwp_mechanism' in [providers.pkcs11]" in message
    assert "0x8000216f" in message


def test_kwp_mechanism_from_the_envelope_is_never_used(softhsm, aes_uri):
    wrapped = open_key(aes_uri, softhsm.settings(aes_mechanism="kwp")).wrap(b"k" * 32, {})
    other = open_key(aes_uri, softhsm.settings(kwp_mechanism="0x210B"))
    with pytest.raises(UnwrapError, match=r"wrapped with mechanism 0x210a but 'kwp_mechanism'"):
        other.unwrap(wrapped, {})


def test_gcm_iv_from_hsm_on_a_token_that_does_not_return_it(softhsm, aes_uri):
    """SoftHSM2 uses the IV it is given; gcm_iv = "hsm" (CloudHSM's way) must fail clearly."""
    kek = open_key(aes_uri, softhsm.settings(gcm_iv="hsm"))
    with pytest.raises(ProviderError, match=r"did not return the AES-GCM IV.*'gcm_iv'.*\"host\""):
        kek.wrap(os.urandom(32), {})


def test_blob_for_another_key_is_refused_before_the_hsm(softhsm, aes_uri):
    other_uri = softhsm.create_key("other-aes", key_id=b"\x09")
    wrapped = open_key(other_uri, softhsm.settings()).wrap(os.urandom(32), CONTEXT)
    with pytest.raises(UnwrapError, match="wrapped by another key"):
        open_key(aes_uri, softhsm.settings()).unwrap(wrapped, CONTEXT)


def test_blob_from_another_provider_or_algorithm_is_refused(softhsm, aes_uri):
    kek = open_key(aes_uri, softhsm.settings())
    wrapped = kek.wrap(os.urandom(32), CONTEXT)
    other_scheme = WrappedKey(
        "aws-cloudhsm", "aws-cloudhsm:object=aes-wrap", wrapped.algorithm, wrapped.ciphertext
    )
    with pytest.raises(UnwrapError, match="provider 'aws-cloudhsm'"):
        kek.unwrap(other_scheme, CONTEXT)
    for algorithm in ("AES-128-GCM", "RSA-OAEP-SHA1", "ROT13"):
        forged = WrappedKey("pkcs11", wrapped.key_id, algorithm, wrapped.ciphertext)
        with pytest.raises(UnwrapError):
            kek.unwrap(forged, CONTEXT)
    bad_aad = WrappedKey(
        "pkcs11", wrapped.key_id, wrapped.algorithm, wrapped.ciphertext, {"aad": "context-v9"}
    )
    with pytest.raises(UnwrapError, match="unknown AAD scheme"):
        kek.unwrap(bad_aad, CONTEXT)


def test_module_that_does_not_exist_names_the_path(softhsm_bare, tmp_path):
    missing = str(tmp_path / "no-such-module.so")
    kek = open_key("pkcs11:token=t;object=k", {"module": missing, "pin": "1"})
    with pytest.raises(ConfigError, match=f"PKCS#11 module '{missing}'.*does not exist"):
        kek.wrap(os.urandom(32), {})


def test_module_that_cannot_load_is_unavailable_naming_the_path(softhsm_bare, tmp_path):
    broken = tmp_path / "libbroken.so"
    broken.write_bytes(b"this is not a shared object")
    kek = open_key("pkcs11:token=t;object=k", {"module": str(broken), "pin": "1"})
    with pytest.raises(ProviderUnavailableError, match=f"cannot load PKCS#11 module '{broken}'"):
        kek.wrap(os.urandom(32), {})


def test_pin_and_module_from_environment(softhsm, aes_uri, monkeypatch):
    monkeypatch.setenv("KMSENVELOPE_PKCS11_MODULE", softhsm.module)
    monkeypatch.setenv("KMSENVELOPE_PKCS11_PIN", softhsm.pin)
    kek = open_key(aes_uri, {})
    assert kek.unwrap(kek.wrap(b"k" * 32, {}), {}) == b"k" * 32


def test_ambiguous_label_is_a_config_error(softhsm):
    softhsm.create_key("shared-label", "aes256", key_id=b"\x01")
    softhsm.create_key("shared-label-2", "aes256", key_id=b"\x01")
    kek = open_key("pkcs11:id=%01", softhsm.settings())
    with pytest.raises(ConfigError, match="2 keys in token 'kmsenv-test' match"):
        kek.wrap(b"k" * 32, {})


def test_token_chosen_when_uri_names_none(softhsm_bare):
    softhsm_bare.init_token("only-token", "pin-only")
    from kmsenvelope_pkcs11 import create_key

    create_key(softhsm_bare.module, "only-token", "pin-only", "k")
    kek = open_key("pkcs11:object=k", {"module": softhsm_bare.module, "pin": "pin-only"})
    assert kek.wrap(b"k" * 32, {}).key_id.startswith("pkcs11:token=only-token;object=k;id=")


def test_several_tokens_need_a_name(softhsm):
    softhsm.create_key("aes-wrap")
    from kmsenvelope_pkcs11 import close_all

    softhsm.init_token("second-token", softhsm.pin)
    close_all()  # let SoftHSM2 rescan its token directory
    kek = open_key("pkcs11:object=aes-wrap", softhsm.settings())
    with pytest.raises(ConfigError, match=r"several tokens \('kmsenv-test', 'second-token'\)"):
        kek.wrap(b"k" * 32, {})
    named = open_key("pkcs11:object=aes-wrap", softhsm.settings(token="kmsenv-test"))
    assert named.wrap(b"k" * 32, {}).key_id.startswith("pkcs11:token=kmsenv-test;")


def test_session_lost_under_the_pool_is_retried_with_a_fresh_login(softhsm, aes_uri, monkeypatch):
    import sys

    from kmsenvelope_pkcs11 import pool

    kek = open_key(aes_uri, softhsm.settings())
    wrapped = kek.wrap(b"k" * 32, CONTEXT)
    # Close the pooled sessions behind the provider's back (C_CloseSession + C_Logout), as a
    # device reset or a dropped HSM connection would.
    with pool.LOCK:
        (token_pool,) = pool._pools.values()
        for session in token_pool._idle:
            session.close()
    # python-pkcs11 finalizes the interrupted C_FindObjects from __del__ (and reports the
    # error as unraisable); that call too must happen with the process-wide lock held.
    finalizer_held_lock = []
    monkeypatch.setattr(
        sys, "unraisablehook", lambda _: finalizer_held_lock.append(pool.LOCK._is_owned())
    )
    assert kek.unwrap(wrapped, CONTEXT) == b"k" * 32
    assert pool._pools
    assert next(iter(pool._pools.values())) is not token_pool
    assert finalizer_held_lock == [True]


def test_a_kek_keeps_working_after_close_all(softhsm, aes_uri):
    kek = open_key(aes_uri, softhsm.settings())
    wrapped = kek.wrap(b"k" * 32, CONTEXT)
    close_all()  # logs out, closes sessions, finalizes the module
    assert kek.unwrap(wrapped, CONTEXT) == b"k" * 32
