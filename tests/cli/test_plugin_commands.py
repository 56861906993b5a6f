"""Issue 12: the CLI core knows no provider. Plugins add commands, global setting options and
logger names through hooks; the local HSM's ``keys``/``audit`` commands and ``--keystore`` come
that way, and so can a third party's (the installed example plugin's ``example keys``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest
from plugin_support import broken_distribution, cli, needs_example, plugin_module

from kmsenvelope import ProviderRegistry, hookimpl
from kmsenvelope.cli import build_parser, main
from kmsenvelope.errors import PluginError
from kmsenvelope.memory import InMemoryKEK


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "example-keys.json"
    path.write_text(json.dumps({"k2": os.urandom(32).hex(), "k1": os.urandom(32).hex()}))
    return path


@needs_example
def test_third_party_command_and_option_run_through_the_cli(
    keyfile: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KMSENVELOPE_PLUGINS", "local,example")
    assert main(["example", "keys", "--example-keyfile", str(keyfile)]) == 0
    assert capsys.readouterr().out == "k1\nk2\n"
    # A global option: before the command too, and the group takes it as well.
    assert main(["--example-keyfile", str(keyfile), "example", "keys", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ["k1", "k2"]
    assert main(["example", "--example-keyfile", str(keyfile), "keys"]) == 0
    assert capsys.readouterr().out == "k1\nk2\n"
    # The option sets [providers.example] keyfile, which the config can set as well.
    monkeypatch.setenv("KMSENVELOPE_PROVIDERS__EXAMPLE__KEYFILE", str(keyfile))
    assert main(["example", "keys"]) == 0
    assert capsys.readouterr().out == "k1\nk2\n"
    monkeypatch.delenv("KMSENVELOPE_PROVIDERS__EXAMPLE__KEYFILE")
    # A plugin command's error is the usual one line and exit code.
    assert main(["example", "keys"]) == 2
    assert capsys.readouterr().err == (
        "kmsenvelope: error: set [providers.example] keyfile or --example-keyfile\n"
    )
    # Blocked: the command and its option are gone, as for any unknown command.
    monkeypatch.setenv("KMSENVELOPE_BLOCK_PLUGINS", "example")
    with pytest.raises(SystemExit) as exited:
        main(["example", "keys"])
    assert exited.value.code == 2
    assert "invalid choice: 'example'" in capsys.readouterr().err


@needs_example
def test_plugin_loggers_follow_verbose_and_its_sdk_stays_silenced(
    keyfile: Path, tmp_path: Path
) -> None:
    """``-vv`` turns on the logger the example plugin declares its own and keeps the one it
    declares silenced at WARNING, though that stand-in SDK set itself to DEBUG."""
    env = {
        **os.environ,
        "KMSENVELOPE_PLUGINS": "local,example",
        "KMSENVELOPE_PROVIDERS__EXAMPLE__KEYFILE": str(keyfile),
    }
    (tmp_path / "plain").write_bytes(b"logged?")
    loud = cli(["-vv", "encrypt", "-i", "plain", "-o", "env", "--to", "example:k1"], env, tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "kmsenvelope: kmsenvelope_example: wrapping with example:k1\n" in loud.stderr
    assert "Plaintext" not in loud.stderr
    assert "example_sdk" not in loud.stderr
    quiet = cli(["encrypt", "-i", "plain", "-o", "env2", "--to", "example:k1"], env, tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""


def _run(ctx: Any, args: argparse.Namespace) -> int:
    return 0


def _registry(commands: Any = None, options: Any = None, scheme: str = "clash") -> ProviderRegistry:
    hooks: dict[str, Any] = {}

    @hookimpl
    def kmsenvelope_register_providers(register: Any) -> None:
        register(scheme, lambda uri, settings: InMemoryKEK.generate())

    hooks["kmsenvelope_register_providers"] = kmsenvelope_register_providers
    if commands is not None:

        @hookimpl
        def kmsenvelope_register_commands(register: Any) -> None:
            commands(register)

        hooks["kmsenvelope_register_commands"] = kmsenvelope_register_commands
    if options is not None:

        @hookimpl
        def kmsenvelope_register_setting_options(register: Any) -> None:
            options(register)

        hooks["kmsenvelope_register_setting_options"] = kmsenvelope_register_setting_options
    registry = ProviderRegistry.load(allow=["local"])
    registry.add_plugin(plugin_module(hooks), name="clash")
    return registry


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config")


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        (
            lambda: _registry(commands=lambda r: r("encrypt", _run, help="x")),
            "plugin 'clash' registered the command 'encrypt', which kmsenvelope already has "
            "-- block it with KMSENVELOPE_BLOCK_PLUGINS=clash",
        ),
        (
            lambda: _registry(commands=lambda r: r("keys", _run, help="x")),
            "command 'keys' is registered by both 'local' and 'clash'",
        ),
        (
            lambda: _registry(
                options=lambda r: r("--profile", "clash", "x", metavar="X", help="x")
            ),
            "plugin 'clash' registered the option --profile, which 'kmsenvelope' already has",
        ),
        (
            lambda: _registry(
                commands=lambda r: r("tool", _run, help="x", arguments=_add_config_option)
            ),
            "plugin 'clash' failed while adding the command 'tool': ArgumentError",
        ),
    ],
)
def test_a_plugin_colliding_with_the_core_is_a_plugin_error(registry: Any, message: str) -> None:
    with pytest.raises(PluginError) as raised:
        build_parser(registry())
    assert message in str(raised.value)
    assert raised.value.exit_code == 5


def test_a_broken_plugin_fails_only_the_commands_that_need_providers(tmp_path: Path) -> None:
    """Plugins now load before the arguments are parsed (they add commands); one that fails to
    import still breaks only what needs providers, as before: help and the keystore commands
    work, ``encrypt`` is the one-line plugin error (exit 5)."""
    site = broken_distribution(tmp_path / "site")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "KMSENVELOPE_PLUGINS": "local,broken-demo",
        "KMSENVELOPE_KEYSTORE_PASSPHRASE": "correct horse battery staple",
    }
    helped = cli(["--help"], env, tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "keys" in helped.stdout
    listed = cli(["keys", "list", "--keystore", str(tmp_path / "none")], env, tmp_path)
    assert listed.returncode == 11
    assert listed.stderr.startswith(f"kmsenvelope: error: no keystore at {tmp_path / 'none'}")
    (tmp_path / "plain").write_bytes(b"x")
    enc = cli(["encrypt", "-i", "plain", "-o", "env", "--to", "local:k"], env, tmp_path)
    assert enc.returncode == 5
    assert enc.stderr.startswith("kmsenvelope: error: plugin 'broken-demo' (")
    assert "failed to import" in enc.stderr
    assert enc.stderr.count("\n") == 1
