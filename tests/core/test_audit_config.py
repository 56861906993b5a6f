"""The ``[audit]`` configuration: sinks, ``audit_sync`` (also top level), ``best_effort``, their
environment variables, errors naming file:line, and the local provider's ``audit_sync``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmsenvelope import ConfigError, Engine
from kmsenvelope.auditing import JsonlSink, LoggingSink, SyslogSink
from kmsenvelope.config import AuditSettings, Config, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_no_sinks_batch_not_best_effort() -> None:
    audit = load_config(env={}).audit
    assert audit == AuditSettings((), "batch", False)
    assert Engine(config=Config()).audit.sinks == ()


def test_audit_table_builds_the_sinks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[audit]\nsinks = ["jsonl:{tmp_path}/a.jsonl", "syslog:user", "logging"]\n'
        'audit_sync = "always"\nbest_effort = true\n',
    )
    config = load_config(path, env={})
    assert config.audit.sinks == (f"jsonl:{tmp_path}/a.jsonl", "syslog:user", "logging")
    assert config.audit.sync == "always"
    assert config.audit.best_effort is True
    jsonl, syslog, logging = Engine(config=config).audit.sinks
    assert isinstance(jsonl, JsonlSink)
    assert jsonl.path == tmp_path / "a.jsonl"
    assert jsonl.sync == "always"
    assert isinstance(syslog, SyslogSink)
    assert syslog.facility == "user"
    assert isinstance(logging, LoggingSink)
    assert config.redacted()["audit"] == {
        "sinks": list(config.audit.sinks),
        "audit_sync": "always",
        "best_effort": True,
    }


def test_environment_replaces_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[audit]\nsinks = ["logging"]\naudit_sync = "always"\n')
    env = {
        "KMSENVELOPE_AUDIT_SINKS": f" jsonl:{tmp_path}/x.jsonl , syslog ",
        "KMSENVELOPE_AUDIT_SYNC": "batch",
        "KMSENVELOPE_AUDIT_BEST_EFFORT": "1",
    }
    audit = load_config(path, env=env).audit
    assert audit == AuditSettings((f"jsonl:{tmp_path}/x.jsonl", "syslog"), "batch", True)
    for raw, value in (("true", True), ("FALSE", False), ("0", False)):
        assert load_config(env={"KMSENVELOPE_AUDIT_BEST_EFFORT": raw}).audit.best_effort is value


def test_top_level_audit_sync_is_the_same_setting(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'audit_sync = "always"\n'), env={}).audit.sync == "always"
    same = write(tmp_path, 'audit_sync = "always"\n[audit]\naudit_sync = "always"\n')
    assert load_config(same, env={}).audit.sync == "always"
    clash = write(tmp_path, 'audit_sync = "always"\n[audit]\naudit_sync = "batch"\n')
    with pytest.raises(ConfigError, match=rf"{clash}:1: key 'audit_sync': 'always' disagrees"):
        load_config(clash, env={})


def test_a_profile_may_change_the_audit(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[audit]\nsinks = ["logging"]\n[profiles.prod.audit]\nsinks = ["syslog"]\n'
        "best_effort = true\n",
    )
    assert load_config(path, env={}).audit.sinks == ("logging",)
    prod = load_config(path, profile="prod", env={}).audit
    assert prod == AuditSettings(("syslog",), "batch", True)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('sinks = ["kafka:topic"]', "unknown audit sink kind 'kafka'"),
        ('sinks = ["jsonl:"]', "names its file"),
        ('sinks = ["jsonl:audit.jsonl"]', "absolute path"),
        ('sinks = ["syslog:local0"]', "facility is 'auth' or 'user'"),
        ('sinks = ["logging:mine"]', "takes no argument"),
        ('sinks = "logging"', "must be a list"),
        ("sinks = [3]", "non-empty string"),
        ('audit_sync = "sometimes"', 'must be "always" or "batch"'),
        ('best_effort = "yes"', "must be true or false"),
        ('sink = ["logging"]', "unknown key (did you mean 'sinks'?)"),
    ],
)
def test_bad_audit_settings_name_the_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, f'recipients = ["local:k"]\n\n[audit]\n{line}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{path}:4: key 'audit.")
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("KMSENVELOPE_AUDIT_SINKS", "jsonl:/tmp/a.jsonl,kafka", "unknown audit sink kind"),
        ("KMSENVELOPE_AUDIT_SYNC", "never", 'must be "always" or "batch"'),
        ("KMSENVELOPE_AUDIT_BEST_EFFORT", "maybe", "must be true, false, 1 or 0"),
    ],
)
def test_bad_audit_environment_names_the_variable(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"environment variable {name}: .*{problem}"):
        load_config(env={name: value})


def test_the_local_provider_receives_the_effective_audit_sync(tmp_path: Path) -> None:
    local = load_config(env={"KMSENVELOPE_AUDIT_SYNC": "always"}).provider_settings("local")
    assert local["audit_sync"] == "always"
    assert "audit setting" in (local.origin("audit_sync") or "")
    assert load_config(env={}).provider_settings("local")["audit_sync"] == "batch"
    own = write(tmp_path, 'audit_sync = "always"\n[providers.local]\naudit_sync = "batch"\n')
    mine = load_config(own, env={}).provider_settings("local")
    assert mine["audit_sync"] == "batch"
    assert mine.origin("audit_sync") == f"{own}:3"
    assert "audit_sync" not in load_config(own, env={}).provider_settings("aws-kms")
    assert "local" not in load_config(env={}).providers  # nothing added to what the user wrote


def test_audit_settings_in_code_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown audit sink kind"):
        AuditSettings(sinks=("nowhere",))
    with pytest.raises(ConfigError, match="absolute path"):
        AuditSettings(sinks=("jsonl:relative.jsonl",))
    with pytest.raises(ConfigError):
        AuditSettings(sync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AuditSettings(sinks="logging")  # type: ignore[arg-type]
