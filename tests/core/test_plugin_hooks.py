"""The plugin host's hooks for commands, setting options and loggers (issue 12): what a plugin
may register, the checks each registration passes, all-or-nothing registration, and
``load(skip_broken=True)``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from plugin_support import broken_distribution, plugin_module

from kmsenvelope import ProviderRegistry, hookimpl
from kmsenvelope.errors import PluginError
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope.settings import Setting, SettingsSchema


def _factory(uri: str, settings: Any) -> InMemoryKEK:
    return InMemoryKEK.generate()


def _run(ctx: Any, args: argparse.Namespace) -> int:
    return 0


def _plugin(
    *,
    commands: Callable[[Any], None] | None = None,
    options: Callable[[Any], None] | None = None,
    loggers: Callable[[Any], None] | None = None,
    scheme: str = "demo",
    schema: SettingsSchema | None = None,
) -> ModuleType:
    """A plugin object providing ``scheme`` and whichever of the three new hooks is given."""
    hooks: dict[str, Any] = {}

    @hookimpl
    def kmsenvelope_register_providers(register: Any) -> None:
        register(scheme, _factory, schema=schema)

    hooks["kmsenvelope_register_providers"] = kmsenvelope_register_providers
    for name, body in (
        ("kmsenvelope_register_commands", commands),
        ("kmsenvelope_register_setting_options", options),
        ("kmsenvelope_register_loggers", loggers),
    ):
        if body is not None:
            hooks[name] = hookimpl(_named(name, body))
    return plugin_module(hooks)


def _named(name: str, body: Callable[[Any], None]) -> Callable[[Any], None]:
    def hook(register: Any) -> None:
        body(register)

    hook.__name__ = name
    return hook


def _demo_commands(register: Any) -> None:
    register("demo", None, help="demo commands")
    register("demo run", _run, help="run it", arguments=lambda p: None)


def test_commands_options_and_loggers_are_collected() -> None:
    registry = ProviderRegistry()
    registry.add_plugin(
        _plugin(
            commands=_demo_commands,
            options=lambda r: r("--demo-dir", "demo", "dir", metavar="DIR", help="where"),
            loggers=lambda r: r(own=["demo_own"], silenced=["demo_sdk", "urllib3"]),
        ),
        name="demo-plugin",
    )
    assert [(c.name, c.words, c.plugin) for c in registry.commands] == [
        ("demo", ("demo",), "demo-plugin"),
        ("demo run", ("demo", "run"), "demo-plugin"),
    ]
    assert registry.commands[0].handler is None
    assert registry.commands[1].handler is _run
    [option] = registry.setting_options
    assert (option.flag, option.scheme, option.setting, option.plugin) == (
        "--demo-dir",
        "demo",
        "dir",
        "demo-plugin",
    )
    assert registry.own_loggers == ("demo_own",)
    assert registry.silenced_loggers == ("demo_sdk", "urllib3")


def test_first_party_providers_declare_their_loggers() -> None:
    """The names the CLI used to hard-code now come from each provider's plugin."""
    registry = ProviderRegistry.load(allow=["local", "aws-kms", "azure-kv", "pkcs11"])
    assert set(registry.silenced_loggers) >= {
        "botocore",
        "boto3",
        "s3transfer",
        "urllib3",
        "azure",
        "msal",
        "pkcs11",
    }
    assert set(registry.own_loggers) >= {
        "kmsenvelope_aws",
        "kmsenvelope_azure",
        "kmsenvelope_pkcs11",
    }
    assert {c.name for c in registry.commands} >= {"keys", "keys create", "audit verify"}
    assert [o.flag for o in registry.setting_options] == ["--keystore"]


_SCHEMA = SettingsSchema("demo", (Setting("dir", "path"),))

BAD = {
    "command name with a capital": dict(commands=lambda r: r("Demo", _run, help="x")),
    "command name with a double space": dict(commands=lambda r: r("demo  run", _run, help="x")),
    "empty command name": dict(commands=lambda r: r("", _run, help="x")),
    "subcommand before its group": dict(commands=lambda r: r("demo run", _run, help="x")),
    "subcommand under a command that runs": dict(
        commands=lambda r: (r("demo", _run, help="x"), r("demo run", _run, help="x"))
    ),
    "group with no command in it": dict(commands=lambda r: r("demo", None, help="x")),
    "handler not callable": dict(commands=lambda r: r("demo", "nope", help="x")),
    "help not text": dict(commands=lambda r: r("demo", _run, help=3)),
    "same command twice": dict(
        commands=lambda r: (r("demo", _run, help="x"), r("demo", _run, help="x"))
    ),
    "short option": dict(options=lambda r: r("-d", "demo", "dir", metavar="D", help="x")),
    "option with a capital": dict(
        options=lambda r: r("--Dir", "demo", "dir", metavar="D", help="x")
    ),
    "option for a scheme it does not provide": dict(
        options=lambda r: r("--other-dir", "other", "dir", metavar="D", help="x")
    ),
    "option for an undeclared setting": dict(
        schema=_SCHEMA, options=lambda r: r("--demo-x", "demo", "x", metavar="X", help="x")
    ),
    "logger names as one string": dict(loggers=lambda r: r(own="demo_own")),
    "empty logger name": dict(loggers=lambda r: r(silenced=[""])),
    "root logger": dict(loggers=lambda r: r(own=["root"])),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_registrations_are_plugin_errors(case: str) -> None:
    registry = ProviderRegistry()
    with pytest.raises(PluginError, match="'bad'"):
        registry.add_plugin(_plugin(**BAD[case]), name="bad")


def test_two_plugins_cannot_claim_one_command_or_option() -> None:
    registry = ProviderRegistry()
    registry.add_plugin(
        _plugin(
            commands=lambda r: r("tool", _run, help="x"),
            options=lambda r: r("--demo-dir", "demo", "dir", metavar="D", help="x"),
        ),
        name="first",
    )
    with pytest.raises(PluginError, match=r"command 'tool' .*'first' and 'second'.*BLOCK"):
        registry.add_plugin(
            _plugin(scheme="two", commands=lambda r: r("tool", _run, help="y")), name="second"
        )
    with pytest.raises(PluginError, match=r"option --demo-dir .*'first' and 'third'.*BLOCK"):
        registry.add_plugin(
            _plugin(
                scheme="three",
                options=lambda r: r("--demo-dir", "three", "dir", metavar="D", help="x"),
            ),
            name="third",
        )


def test_a_failed_registration_leaves_the_registry_as_it_was() -> None:
    """The provider a plugin registered before its commands hook failed is not kept, and the
    plugin's name is free again (old code kept the half-registered provider)."""
    registry = ProviderRegistry()

    def explode(register: Any) -> None:
        raise RuntimeError("boom in commands")

    with pytest.raises(PluginError, match="boom in commands"):
        registry.add_plugin(_plugin(commands=explode), name="half")
    assert registry.providers == {}
    assert registry.commands == ()
    registry.add_plugin(_plugin(commands=lambda r: r("tool", _run, help="x")), name="half")
    assert set(registry.providers) == {"demo"}
    assert [c.name for c in registry.commands] == ["tool"]


def test_load_skip_broken_keeps_the_others_and_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(broken_distribution(tmp_path)))
    with pytest.raises(PluginError, match=r"'broken-demo' .* failed to import"):
        ProviderRegistry.load(allow=["local", "broken-demo"])
    registry = ProviderRegistry.load(allow=["local", "broken-demo"], skip_broken=True)
    assert set(registry.providers) == {"local"}
    [error] = registry.broken
    assert "KMSENVELOPE_BLOCK_PLUGINS=broken-demo" in str(error)
    assert ProviderRegistry.load(allow=["local"], skip_broken=True).broken == ()
