"""``allowed_keys`` patterns cannot leave a host or an AWS account open: apart from exactly
``SCHEME:*``, no wildcard first, none before the end of a URL host or an ARN's account id."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmsenvelope import Config, ConfigError, Engine, ProviderRegistry, load_config
from kmsenvelope.config import check_allowed_keys

REFUSED = [
    # A leading wildcard matches other hosts and accounts ('evilbilling…', '999111122223333').
    ("azure-kv:*billing.vault.azure.net/keys/*", "may not start with a wildcard"),
    ("aws-kms:*111122223333:key/*", "may not start with a wildcard"),
    ("aws-kms:?rn:aws:kms:eu-west-1:111122223333:key/*", "may not start with a wildcard"),
    ("local:?ay", "may not start with a wildcard"),
    ("local:**", "may not start with a wildcard"),
    ("pkcs11:[t]oken=hsm;object=*", "may not start with a wildcard"),
    # A wildcard in or before the account id of an ARN.
    ("aws-kms:arn:aws:kms:eu-west-1:111122223333*", "account id"),
    ("aws-kms:arn:aws:kms:eu-west-1:1111222233?3:key/*", "account id"),
    ("aws-kms:arn:aws:kms:*:111122223333:key/*", "account id"),
    ("aws-kms:arn:aws*", "account id"),
    ("aws-kms:ar*", "account id"),
    # A wildcard in or right after a URL host (as before).
    ("azure-kv:https://billing.vault.azure.net*", "spell the URL's host out"),
]

ACCEPTED = [
    "aws-kms:arn:aws:kms:eu-west-1:111122223333:key/*",
    "aws-kms:arn:aws:kms:eu-west-1:111122223333:*",
    "azure-kv:https://billing.vault.azure.net/keys/*",
    "local:*",
    "local:pay*",
    "aws-kms:*",
    "azure-kv:*",
    "pkcs11:token=hsm;object=*",
    "aws-kms:arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
]


@pytest.mark.parametrize(("pattern", "problem"), REFUSED)
def test_refused_in_code(pattern: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        check_allowed_keys([pattern])
    with pytest.raises(ConfigError, match=problem):
        Config(allowed_keys=(pattern,))
    with pytest.raises(ConfigError, match=problem):
        Engine(registry=ProviderRegistry(), config=Config(), allowed_keys=[pattern])
    with pytest.raises(ConfigError) as info:
        check_allowed_keys([pattern], source="--allow")
    assert str(info.value).startswith(f"--allow {pattern!r}: ")


@pytest.mark.parametrize(("pattern", "problem"), REFUSED)
def test_refused_in_config_profile_and_environment(
    tmp_path: Path, pattern: str, problem: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'recipients = ["local:a"]\nallowed_keys = ["local:a", "{pattern}"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}:2: key 'allowed_keys': {pattern!r}: ")
    assert problem in str(info.value)
    path.write_text(f'[profiles.p]\n\nallowed_keys = ["{pattern}"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, profile="p", env={})
    assert str(info.value).startswith(f"{path}:3: key 'profiles.p.allowed_keys': {pattern!r}")
    env = {"KMSENVELOPE_ALLOWED_KEYS": f"local:a,{pattern}"}
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert str(info.value).startswith(f"environment variable KMSENVELOPE_ALLOWED_KEYS: {pattern!r}")


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_accepted_everywhere(tmp_path: Path, pattern: str) -> None:
    assert check_allowed_keys([pattern]) == (pattern,)
    assert check_allowed_keys([pattern], source="--allow") == (pattern,)
    path = tmp_path / "config.toml"
    path.write_text(f'allowed_keys = ["{pattern}"]\n')
    assert load_config(path, env={}).allowed_keys == (pattern,)
    assert load_config(None, env={"KMSENVELOPE_ALLOWED_KEYS": pattern}).allowed_keys == (pattern,)


def test_accepted_patterns_pin_the_account_and_host() -> None:
    engine = Engine(
        registry=ProviderRegistry(),
        config=Config(),
        allowed_keys=[
            "aws-kms:arn:aws:kms:eu-west-1:111122223333:key/*",
            "azure-kv:https://billing.vault.azure.net/keys/*",
        ],
    )
    assert engine.key_allowed("aws-kms:arn:aws:kms:eu-west-1:111122223333:key/k")
    assert not engine.key_allowed("aws-kms:arn:aws:kms:eu-west-1:999111122223333:key/k")
    assert engine.key_allowed("azure-kv:https://billing.vault.azure.net/keys/k/v")
    assert not engine.key_allowed("azure-kv:https://evilbilling.vault.azure.net/keys/k/v")
