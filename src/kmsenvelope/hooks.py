"""The hooks a kmsenvelope plugin may implement, and what each hook's ``register`` accepts.

This is the plugin contract (``docs/plugins.md``); the host that calls the hooks and checks what
they register is :mod:`kmsenvelope.plugins`. ``hookimpl`` marks a plugin's implementations.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from .kek import ProviderFactory
from .settings import SettingsSchema

if TYPE_CHECKING:
    from .config import Config
    from .engine import Engine
    from .migrate.store import EnvelopeStore
    from .migrate.store_urls import StoreURL

__all__ = [
    "PROJECT",
    "AddArguments",
    "CommandContext",
    "CommandHandler",
    "KeyCreator",
    "PluginHooks",
    "RegisterCommand",
    "RegisterKeyCreator",
    "RegisterLoggers",
    "RegisterProvider",
    "RegisterSettingOption",
    "RegisterStore",
    "StoreFactory",
    "hookimpl",
    "hookspec",
]

PROJECT = "kmsenvelope"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterProvider(Protocol):
    """``register(scheme, factory, schema=None)``: what ``kmsenvelope_register_providers`` gets."""

    def __call__(
        self, scheme: str, factory: ProviderFactory, /, *, schema: SettingsSchema | None = None
    ) -> None: ...


KeyCreator = Callable[[str, Mapping[str, Any], str], str]
"""``creator(uri, settings, key_type) -> uri``: make the key ``uri`` names; return its URI."""
RegisterKeyCreator = Callable[[str, KeyCreator], None]


class CommandContext(Protocol):
    """What a plugin command's handler gets besides its arguments: this run's config and
    engine, built on first use from the global options (``--config``, ``--profile``, setting
    options such as ``--keystore``, ``--allow``)."""

    @property
    def config(self) -> Config: ...

    @property
    def engine(self) -> Engine: ...


CommandHandler = Callable[[CommandContext, argparse.Namespace], int]
"""``handler(ctx, args) -> exit code``: runs one command; failures are raised as library errors."""
AddArguments = Callable[[argparse.ArgumentParser], None]
"""``arguments(parser)``: declare a command's own arguments with ``parser.add_argument``."""


class RegisterCommand(Protocol):
    """``register(name, handler, *, help, description=None, arguments=None)``: what
    ``kmsenvelope_register_commands`` gets.

    ``name`` is the command's words: ``"tool"``, or ``"tool sub"`` under a group ``"tool"`` the
    same plugin registered before with ``handler=None``.
    """

    def __call__(
        self,
        name: str,
        handler: CommandHandler | None,
        /,
        *,
        help: str,
        description: str | None = None,
        arguments: AddArguments | None = None,
    ) -> None: ...


class RegisterSettingOption(Protocol):
    """``register(flag, scheme, setting, *, metavar, help)``: what
    ``kmsenvelope_register_setting_options`` gets."""

    def __call__(
        self, flag: str, scheme: str, setting: str, /, *, metavar: str, help: str
    ) -> None: ...


class RegisterLoggers(Protocol):
    """``register(own=(…), silenced=(…))``: what ``kmsenvelope_register_loggers`` gets."""

    def __call__(self, *, own: Sequence[str] = (), silenced: Sequence[str] = ()) -> None: ...


class StoreFactory(Protocol):
    """``factory(url, config) -> store``: open the store a URL names (its scheme is the one the
    factory was registered for) as an :class:`~kmsenvelope.migrate.EnvelopeStore`, configured by
    the URL and the run's :class:`~kmsenvelope.config.Config`. Bad URL parts: ``ConfigError``."""

    def __call__(self, url: StoreURL, config: Config, /) -> EnvelopeStore: ...


class RegisterStore(Protocol):
    """``register(url_scheme, factory)``: what ``kmsenvelope_register_stores`` gets."""

    def __call__(self, url_scheme: str, factory: StoreFactory, /) -> None: ...


class PluginHooks:
    """Hooks a kmsenvelope plugin may implement."""

    @hookspec
    def kmsenvelope_register_providers(self, register: RegisterProvider) -> None:
        """Call ``register(scheme, factory)`` once per URI scheme this plugin provides
        (``schema=`` its :class:`~kmsenvelope.settings.SettingsSchema`, if it declares one)."""

    @hookspec
    def kmsenvelope_register_key_creators(self, register: RegisterKeyCreator) -> None:
        """Optional: call ``register(scheme, creator)`` for schemes whose keys
        ``kmsenvelope keys create URI`` may create (``creator(uri, settings, key_type)``)."""

    @hookspec
    def kmsenvelope_register_commands(self, register: RegisterCommand) -> None:
        """Optional: call ``register(name, handler, help=…)`` once per CLI command this plugin
        adds; a group (``handler=None``) before the commands under it."""

    @hookspec
    def kmsenvelope_register_setting_options(self, register: RegisterSettingOption) -> None:
        """Optional: call ``register(flag, scheme, setting, metavar=…, help=…)`` for a global CLI
        option that sets one of this plugin's provider settings (as ``--keystore DIR`` does)."""

    @hookspec
    def kmsenvelope_register_loggers(self, register: RegisterLoggers) -> None:
        """Optional: name this plugin's loggers: ``own`` ones, which ``-v``/``-vv`` turn on with
        kmsenvelope's, and ``silenced`` ones (an SDK's, which may log request bodies holding
        data keys), which the CLI never lets below WARNING."""

    @hookspec
    def kmsenvelope_register_stores(self, register: RegisterStore) -> None:
        """Optional: call ``register(url_scheme, factory)`` once per URL scheme of the envelope
        stores this plugin provides (``s3``, ``gs``, …), which ``migrate`` and ``rewrap`` then
        accept as ``SCHEME://…`` (``factory(url, config) -> EnvelopeStore``)."""
