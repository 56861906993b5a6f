"""Key URIs and settings of vault-transit: what is accepted, and the one-line ConfigError for
everything else (no network involved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmsenvelope import ConfigError
from kmsenvelope.settings import SettingsTable
from kmsenvelope_vault.settings import KUBERNETES_TOKEN_FILE, parse_settings
from kmsenvelope_vault.uri import KeyUri, parse_key_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "vault-transit:https://vault.example.com:8200/transit/keys/payments",
            KeyUri("https://vault.example.com:8200", "transit", "payments"),
        ),
        (
            "vault-transit:https://Vault.Example.com:443/team/transit/keys/app.key_1/12",
            KeyUri("https://vault.example.com", "team/transit", "app.key_1", 12),
        ),
        (
            "vault-transit:http://127.0.0.1:8200/transit/keys/k/1",
            KeyUri("http://127.0.0.1:8200", "transit", "k", 1),
        ),
        (
            "vault-transit:http://localhost:8200/a/b/c/keys/3",
            KeyUri("http://localhost:8200", "a/b/c", "3"),
        ),
        (
            "vault-transit:http://[::1]:8200/transit/keys/k",
            KeyUri("http://[::1]:8200", "transit", "k"),
        ),
    ],
)
def test_uris_parse_to_canonical_form(uri: str, expected: KeyUri) -> None:
    parsed = parse_key_uri(uri)
    assert parsed == expected
    assert parse_key_uri(parsed.uri) == parsed


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("vault-transit:http://vault.example.com:8200/transit/keys/k", "only loopback hosts"),
        ("vault-transit:http://10.0.0.5:8200/transit/keys/k", "only loopback hosts"),
        ("vault-transit:http://127.0.0.1.nip.io:8200/transit/keys/k", "only loopback hosts"),
        ("vault-transit:ftp://vault:8200/transit/keys/k", "https:// URL"),
        ("vault-transit:https://vault:8200/keys/k", "/MOUNT/keys/NAME"),
        ("vault-transit:https://vault:8200/transit/k", "/MOUNT/keys/NAME"),
        ("vault-transit:https://vault:8200/transit/keys/k/01", "without leading zeros"),
        ("vault-transit:https://vault:8200/transit/keys/-bad", "a key name"),
        ("vault-transit:https://vault:8200/a/../keys/k", "mount path segment"),
        ("vault-transit:https://user:pw@vault:8200/transit/keys/k", "user information"),
        ("vault-transit:https://vault:8200/transit/keys/k?x=1", "query"),
        ("vault-transit:https://vault:99999/transit/keys/k", "invalid"),
        ("aws-kms:https://vault:8200/transit/keys/k", "scheme"),
    ],
)
def test_bad_uris_are_config_errors(uri: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_key_uri(uri)
    message = str(caught.value)
    assert problem in message
    assert "\n" not in message
    assert "pw@" not in message or "user information" in message


def test_token_auth_reads_vault_token_and_default_token_file(tmp_path: Path) -> None:
    parsed = parse_settings({}, env={"VAULT_TOKEN": " hvs.secret "})
    assert parsed.auth == "token"
    assert parsed.env_token == "hvs.secret"
    assert parsed.token_file is not None
    assert parsed.token_file.endswith(".vault-token")
    assert "hvs.secret" not in repr(parsed)


def test_namespace_and_ca_bundle_from_the_environment(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    parsed = parse_settings({}, env={"VAULT_NAMESPACE": "team/", "VAULT_CACERT": str(ca)})
    assert parsed.namespace == "team"
    assert parsed.ca_bundle == str(ca)
    given = parse_settings({"namespace": "other"}, env={"VAULT_NAMESPACE": "team"})
    assert given.namespace == "other"


def test_approle_and_kubernetes_settings(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret-id"
    secret_file.write_text("s3cr3t-id\n")
    approle = parse_settings(
        {"auth": "approle", "role_id": "r-1", "secret_id_file": str(secret_file)}, env={}
    )
    assert (approle.auth_mount, approle.secret_id_file) == ("approle", str(secret_file))
    kube = parse_settings({"auth": "kubernetes", "role": "app", "auth_mount": "k8s/"}, env={})
    assert (kube.kubernetes_token_file, kube.auth_mount) == (KUBERNETES_TOKEN_FILE, "k8s")
    hidden = parse_settings({"auth": "approle", "role_id": "r", "secret_id": "topsecret"}, env={})
    assert "topsecret" not in repr(hidden)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"auth": "ldap"}, "must be one of: token, approle, kubernetes"),
        ({"auth": "approle"}, "'role_id' in [providers.vault-transit] is required"),
        ({"auth": "kubernetes"}, "'role' in [providers.vault-transit] is required"),
        ({"role_id": "r"}, "is not used by auth = 'token'"),
        ({"auth": "approle", "role_id": "r", "role": "x"}, "is not used by auth = 'approle'"),
        ({"token_file": "/nonexistent/token"}, "is not a readable file"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "is not a readable file"),
        ({"retry_total": 99}, "from 0 to 20"),
        ({"tokn_file": "x"}, "did you mean 'token_file'"),
        ({"auth": "approle", "role_id": "r", "auth_mount": "a/../b"}, "auth_mount"),
    ],
)
def test_bad_settings_are_one_line_config_errors(table: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(SettingsTable("vault-transit", table), env={})
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_secret_id_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"secret_id": "hunter2-secret"}, env={})
    assert "hunter2-secret" not in str(caught.value)
