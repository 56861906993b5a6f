"""``max_unwrap_attempts``: top level, profile and ``KMSENVELOPE_MAX_UNWRAP_ATTEMPTS``, an integer
1..64 (default 8), with the usual file:line errors; ``config show`` prints it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmsenvelope import Config, ConfigError, load_config


def test_default_file_profile_and_environment(tmp_path: Path) -> None:
    assert Config().max_unwrap_attempts == 8
    assert load_config(None, env={}).max_unwrap_attempts == 8
    path = tmp_path / "config.toml"
    path.write_text("max_unwrap_attempts = 3\n[profiles.wide]\nmax_unwrap_attempts = 64\n")
    assert load_config(path, env={}).max_unwrap_attempts == 3
    assert load_config(path, profile="wide", env={}).max_unwrap_attempts == 64
    env = {"KMSENVELOPE_MAX_UNWRAP_ATTEMPTS": " 1 "}
    assert load_config(path, profile="wide", env=env).max_unwrap_attempts == 1


@pytest.mark.parametrize("value", ["0", "65", "true", '"4"', "2.0", "-1"])
def test_bad_values_name_file_and_line(tmp_path: Path, value: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'recipients = ["local:a"]\n[profiles.p]\nmax_unwrap_attempts = {value}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, profile="p", env={})
    assert str(info.value).startswith(
        f"{path}:3: key 'profiles.p.max_unwrap_attempts': must be a whole number from 1 to 64"
    )


@pytest.mark.parametrize("value", ["0", "65", "eight", "1.5"])
def test_bad_environment_value_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"KMSENVELOPE_MAX_UNWRAP_ATTEMPTS": value})
    assert str(info.value).startswith(
        "environment variable KMSENVELOPE_MAX_UNWRAP_ATTEMPTS: must be a whole number from 1 to 64"
    )


def test_set_in_code_is_checked() -> None:
    assert Config(max_unwrap_attempts=64).max_unwrap_attempts == 64
    for bad in (0, 65, True):
        with pytest.raises(ConfigError, match="max_unwrap_attempts must be a whole number"):
            Config(max_unwrap_attempts=bad)


def test_config_show_prints_it(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("max_unwrap_attempts = 5\n")
    out = subprocess.run(
        [sys.executable, "-m", "kmsenvelope", "--config", str(path), "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["max_unwrap_attempts"] == 5
