"""Settings and credentials: [providers.pkcs11] / [providers.aws-cloudhsm] plus environment."""

from __future__ import annotations

import pytest

from kmsenvelope import ConfigError
from kmsenvelope_pkcs11 import load_settings
from kmsenvelope_pkcs11.cloudhsm import CLOUDHSM, DEFAULT_MODULE

MOD = "/usr/lib/softhsm/libsofthsm2.so"


def test_defaults():
    s = load_settings({"module": MOD, "pin": "1234"}, env={})
    assert (s.module, s.pin, s.aes_mechanism, s.kwp_mechanism, s.oaep_hash, s.gcm_iv) == (
        MOD,
        "1234",
        "gcm",
        0x210A,
        "sha256",
        "host",
    )
    assert s.max_sessions == 4


def test_module_and_pin_from_environment():
    s = load_settings({}, env={"KMSENVELOPE_PKCS11_MODULE": MOD, "KMSENVELOPE_PKCS11_PIN": "9876"})
    assert s.module == MOD
    assert s.pin == "9876"
    assert "KMSENVELOPE_PKCS11_PIN" in s.pin_source


def test_settings_win_over_environment():
    s = load_settings(
        {"module": "/x.so", "pin": "a"},
        env={"KMSENVELOPE_PKCS11_MODULE": MOD, "KMSENVELOPE_PKCS11_PIN": "b"},
    )
    assert (s.module, s.pin) == ("/x.so", "a")


def test_repr_hides_pin():
    s = load_settings({"module": MOD, "pin": "pin-that-must-not-show"}, env={})
    assert "pin-that-must-not-show" not in repr(s)
    assert "pin-that-must-not-show" not in str(s)


def test_no_module_is_a_config_error_naming_setting_and_variable():
    with pytest.raises(
        ConfigError, match=r"'module' in \[providers.pkcs11\].*KMSENVELOPE_PKCS11_MODULE"
    ):
        load_settings({"pin": "1"}, env={})


def test_no_pin_is_a_config_error():
    with pytest.raises(ConfigError, match=r"no PIN configured for pkcs11.*KMSENVELOPE_PKCS11_PIN"):
        load_settings({"module": MOD}, env={})


def test_unknown_setting_is_rejected():
    with pytest.raises(ConfigError) as info:
        load_settings({"module": MOD, "pin": "1", "oaep-hash": "sha1"}, env={})
    assert str(info.value) == (
        "unknown setting 'oaep-hash' in [providers.pkcs11] (did you mean 'oaep_hash'?)"
    )


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"aes_mechanism": "cbc"}, "'aes_mechanism'.*gcm, kwp"),
        ({"oaep_hash": "md5"}, "'oaep_hash'.*sha1"),
        ({"gcm_iv": "random"}, "'gcm_iv'.*host, hsm"),
        ({"kwp_mechanism": "wrap-it"}, "'kwp_mechanism'.*0x210A"),
        ({"kwp_mechanism": 0x1081}, "not an AES key-wrap-with-padding mechanism"),
        ({"kwp_mechanism": True}, "'kwp_mechanism'"),
        ({"max_sessions": 0}, "'max_sessions'.*from 1 to 64"),
        ({"token": ""}, "'token'.*non-empty string"),
        ({"pin": ""}, "'pin'.*non-empty string"),
    ],
)
def test_invalid_values_name_the_setting(settings, match):
    with pytest.raises(ConfigError, match=match):
        load_settings({"module": MOD, "pin": "1", **settings}, env={})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0x210B, 0x210B),
        ("0x210a", 0x210A),
        ("CKM_AES_KEY_WRAP_KWP", 0x210B),
        ("ckm_cloudhsm_aes_key_wrap_zero_pad", 0x8000216F),
        ("0x80001234", 0x80001234),
    ],
)
def test_kwp_mechanism_accepts_numbers_strings_and_names(value, expected):
    s = load_settings({"module": MOD, "pin": "1", "kwp_mechanism": value}, env={})
    assert s.kwp_mechanism == expected


def test_oaep_hash_spelling_is_normalised():
    s = load_settings({"module": MOD, "pin": "1", "oaep_hash": "SHA-1"}, env={})
    assert s.oaep_hash == "sha1"


# -- the aws-cloudhsm preset --------------------------------------------------------------------


def test_cloudhsm_defaults_and_crypto_user_from_cloudhsm_pin():
    s = load_settings(
        {}, CLOUDHSM, env={"CLOUDHSM_PIN": "app_cu:S3cret!", "CLOUDHSM_ROLE": "crypto-user"}
    )
    assert s.scheme == "aws-cloudhsm"
    assert s.module == DEFAULT_MODULE == "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so"
    assert s.kwp_mechanism == 0x8000216F  # CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD (RFC 5649)
    assert s.gcm_iv == "hsm"
    assert s.pin == "app_cu:S3cret!"
    assert "CLOUDHSM_PIN" in s.pin_source


def test_cloudhsm_ignores_the_generic_pkcs11_variables():
    env = {
        "KMSENVELOPE_PKCS11_MODULE": MOD,
        "KMSENVELOPE_PKCS11_PIN": "1234",
        "CLOUDHSM_PIN": "cu:pw",
    }
    s = load_settings({}, CLOUDHSM, env=env)
    assert s.module == DEFAULT_MODULE
    assert s.pin == "cu:pw"


def test_cloudhsm_user_and_password_settings():
    s = load_settings({"user": "cu", "password": "pw"}, CLOUDHSM, env={"CLOUDHSM_PIN": "x:y"})
    assert s.pin == "cu:pw"


def test_cloudhsm_pin_setting_wins():
    s = load_settings({"pin": "cu:pw"}, CLOUDHSM, env={"CLOUDHSM_PIN": "other:pw"})
    assert s.pin == "cu:pw"


def test_cloudhsm_admin_role_is_refused():
    with pytest.raises(ConfigError, match=r"CLOUDHSM_ROLE is 'admin'.*crypto-user"):
        load_settings({}, CLOUDHSM, env={"CLOUDHSM_PIN": "admin:pw", "CLOUDHSM_ROLE": "admin"})


@pytest.mark.parametrize(
    ("settings", "env", "match"),
    [
        ({}, {"CLOUDHSM_PIN": "no-colon-here"}, "must be CU_USERNAME:PASSWORD"),
        ({"pin": "user:"}, {}, "must be CU_USERNAME:PASSWORD"),
        ({"pin": "u:p", "user": "u"}, {}, "either 'pin' or 'user' and 'password'"),
        ({"user": "u"}, {}, "'user' and 'password'.*go together"),
        ({}, {}, "no CloudHSM crypto-user credentials.*CLOUDHSM_PIN"),
    ],
)
def test_cloudhsm_bad_credentials(settings, env, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_settings(settings, CLOUDHSM, env=env)
    assert "no-colon-here" not in str(info.value)


# -- code-loading settings take absolute paths only ----------------------------------------------


@pytest.mark.parametrize("module", ["./evil.so", "evil.so", "lib/../evil.so"])
def test_relative_module_is_refused(module):
    with pytest.raises(ConfigError) as info:
        load_settings({"module": module, "pin": "1"}, env={})
    assert str(info.value).startswith(
        "setting 'module' in [providers.pkcs11] must be an absolute path: it names code to load"
    )
    with pytest.raises(ConfigError) as info:
        load_settings({}, env={"KMSENVELOPE_PKCS11_MODULE": module, "KMSENVELOPE_PKCS11_PIN": "1"})
    assert str(info.value).startswith(
        "environment variable KMSENVELOPE_PKCS11_MODULE: setting 'module' in [providers.pkcs11] "
        "must be an absolute path"
    )
    with pytest.raises(ConfigError, match="must be an absolute path"):
        load_settings({"module": module}, CLOUDHSM, env={"CLOUDHSM_PIN": "cu:pw"})


def test_module_under_home_is_absolute(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings({"module": "~/lib/libsofthsm2.so", "pin": "1"}, env={})
    assert s.module == str(tmp_path / "lib" / "libsofthsm2.so")


def test_schemas_are_declared_and_errors_name_the_config_line(tmp_path):
    from kmsenvelope import load_config
    from kmsenvelope_pkcs11.settings import PKCS11

    assert PKCS11.schema.get("module").loads_code
    assert PKCS11.schema.get("pin").secret
    assert CLOUDHSM.schema.get("password").secret
    assert not CLOUDHSM.schema.get("user").secret
    path = tmp_path / "config.toml"
    path.write_text('[providers.pkcs11]\nmodule = "./evil.so"\npin = "1"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(load_config(path, env={}).provider_settings("pkcs11"), env={})
    assert str(info.value).startswith(f"{path}:2: setting 'module' in [providers.pkcs11] must be")
    with pytest.raises(ConfigError, match=r"unknown setting 'usr' .*did you mean 'user'"):
        load_settings({"usr": "cu", "password": "pw"}, CLOUDHSM, env={})
