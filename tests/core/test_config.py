"""Configuration: lookup order, profiles, environment overrides, and errors that point home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmsenvelope import ConfigError, load_config

GOOD = """\
recipients = ["local:payments"]

[context]
app = "billing"

[providers.local]
keystore = "/srv/keystore"

[providers.aws-kms]
region = "eu-west-1"
secret_access_key = "AKIASECRET"

[profiles.prod]
recipients = ["aws-kms:alias/prod", "local:backup"]

[profiles.prod.context]
env = "prod"

[profiles.prod.providers.aws-kms]
region = "us-east-1"
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The config file path, selected through KMSENVELOPE_CONFIG (written by each test)."""
    path = tmp_path / "conf" / "config.toml"
    path.parent.mkdir()
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(path))
    return path


def test_working_directory_file_is_ignored(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated_env / "kmsenvelope.toml").write_text(
        'recipients = ["aws-kms:alias/attacker"]\n[providers.pkcs11]\nmodule = "./evil.so"\n'
    )
    assert load_config().path is None  # not even without any other configuration
    assert load_config().recipients == ()
    other = tmp_path / "other.toml"
    other.write_text('recipients = ["local:other"]\n')
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(other))
    cfg = load_config()
    assert cfg.path == other
    assert cfg.recipients == ("local:other",)
    assert "pkcs11" not in cfg.providers


def test_env_file_then_user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config().path is None  # nothing anywhere
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "kmsenvelope" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('recipients = ["local:user"]\n')
    assert load_config().recipients == ("local:user",)
    explicit = tmp_path / "x.toml"
    explicit.write_text('recipients = ["local:explicit"]\n')
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(explicit))
    assert load_config().recipients == ("local:explicit",)
    monkeypatch.setenv("KMSENVELOPE_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config()


def test_profile_overrides(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text(GOOD)
    base = load_config()
    assert base.provider_settings("aws-kms")["region"] == "eu-west-1"
    assert dict(base.context) == {"app": "billing"}
    prod = load_config(profile="prod")
    assert prod.recipients == ("aws-kms:alias/prod", "local:backup")
    assert prod.provider_settings("aws-kms")["region"] == "us-east-1"
    assert prod.provider_settings("aws-kms")["secret_access_key"] == "AKIASECRET"
    assert dict(prod.context) == {"app": "billing", "env": "prod"}
    monkeypatch.setenv("KMSENVELOPE_PROFILE", "prod")
    assert load_config().profile == "prod"
    with pytest.raises(ConfigError, match=r"profile .nope. is not defined"):
        load_config(profile="nope")


def test_environment_overrides(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text(GOOD)
    monkeypatch.setenv("KMSENVELOPE_RECIPIENTS", "local:a, local:b")
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE", "/elsewhere")
    monkeypatch.setenv("KMSENVELOPE_PROVIDERS__AWS_KMS__REGION", "ap-south-1")
    monkeypatch.setenv("KMSENVELOPE_PROVIDERS__AZURE_KV__TENANT_ID", "t")
    cfg = load_config()
    assert cfg.recipients == ("local:a", "local:b")
    assert cfg.provider_settings("local")["keystore"] == "/elsewhere"
    assert cfg.provider_settings("aws-kms")["region"] == "ap-south-1"
    assert cfg.provider_settings("azure-kv")["tenant_id"] == "t"
    monkeypatch.setenv("KMSENVELOPE_PROVIDERS__BROKEN", "x")
    with pytest.raises(ConfigError, match="KMSENVELOPE_PROVIDERS__BROKEN"):
        load_config()


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ('recipients = "local:x"\n', 1, "recipients"),
        ('\n\nrecipent = ["local:x"]\n', 3, "recipent"),
        ('[providers]\nlocal = "oops"\n', 2, "providers.local"),
        ("[context]\napp = 3\n", None, "context"),
        ("[profiles.p]\nrecipients = [1]\n", 2, "profiles.p.recipients"),
        ('recipients = ["no-scheme"]\n', 1, "recipients"),
    ],
)
def test_bad_config_names_file_line_and_key(
    config_file: Path, text: str, line: int | None, key: str
) -> None:
    config_file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(profile="p" if "profiles.p" in text else None)
    message = str(info.value)
    assert str(config_file) in message
    assert f"'{key}'" in message
    if line is not None:
        assert f":{line}:" in message


def test_toml_syntax_error_names_line(config_file: Path) -> None:
    config_file.write_text('recipients = ["a"]\n[providers\n')
    with pytest.raises(ConfigError, match=r"config.toml: invalid TOML: .*line 2"):
        load_config()


def test_config_show_redacts_secrets(isolated_env: Path, config_file: Path) -> None:
    config_file.write_text(
        GOOD + '\n[providers.pkcs11]\npin = "1234"\nmodule = "/lib/x.so"\n'
        '[providers.azure-kv]\nclient_secret = "s3cr3t"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "kmsenvelope", "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=isolated_env,
        env={**os.environ, "KMSENVELOPE_PLUGINS": "local,pkcs11,aws-kms"},
    )
    assert out.returncode == 0, out.stderr
    assert "1234" not in out.stdout
    assert "s3cr3t" not in out.stdout
    assert "AKIASECRET" not in out.stdout
    shown = json.loads(out.stdout)
    assert shown["providers"]["pkcs11"] == {"pin": "***", "module": "/lib/x.so"}
    assert shown["providers"]["aws-kms"]["region"] == "eu-west-1"
    assert shown["providers"]["aws-kms"]["secret_access_key"] == "***"  # undeclared
    assert shown["providers"]["azure-kv"] == {"client_secret": "***"}  # not installed
    assert shown["recipients"] == ["local:payments"]


def test_cli_bad_config_is_one_line(isolated_env: Path, config_file: Path) -> None:
    config_file.write_text('recipent = ["local:x"]\n')
    out = subprocess.run(
        [sys.executable, "-m", "kmsenvelope", "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=isolated_env,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr
    assert "config.toml:1: key 'recipent': unknown key (did you mean 'recipients'?)" in out.stderr


def test_config_repr_redacts_secrets() -> None:
    from kmsenvelope import Config

    cfg = Config(
        providers={
            "pkcs11": {"pin": "1234", "token": "label"},
            "azure-kv": {"client_secret": "S3cr3t"},
        }
    )
    text = repr(cfg)
    assert "1234" not in text
    assert "S3cr3t" not in text
    assert "label" not in text  # the repr knows no provider schema: nothing of theirs is shown
    assert "'token': '***'" in text
