"""What plugins register -- providers, key creators, commands, setting options, logger names,
envelope stores --
as the records the plugin registry keeps, and the checks each registration must pass."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import PluginError
from .hooks import AddArguments, CommandHandler, KeyCreator, StoreFactory
from .kek import ProviderFactory, scheme_of
from .settings import SettingsSchema

__all__ = [
    "BLOCK_ENV",
    "CommandInfo",
    "PluginRegistration",
    "ProviderInfo",
    "Registered",
    "SettingOption",
    "StoreInfo",
]

BLOCK_ENV = "KMSENVELOPE_BLOCK_PLUGINS"
"""Entry-point names never loaded; errors about two plugins colliding point at it."""

_COMMAND_WORD = re.compile(r"[a-z][a-z0-9-]*\Z")
_OPTION_FLAG = re.compile(r"--[a-z][a-z0-9-]*\Z")
_URL_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\Z")  # RFC 3986 scheme, lower case


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """One registered provider: its scheme, and the plugin and distribution it came from."""

    scheme: str
    plugin: str
    distribution: str
    version: str
    factory: ProviderFactory
    schema: SettingsSchema | None = None


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """One registered envelope store: its URL scheme, and the plugin and distribution it came
    from."""

    scheme: str
    plugin: str
    distribution: str
    version: str
    factory: StoreFactory


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """One registered CLI command: a group of commands (``handler`` None) or one that runs."""

    name: str
    plugin: str
    help: str
    handler: CommandHandler | None
    description: str | None = None
    arguments: AddArguments | None = None

    @property
    def words(self) -> tuple[str, ...]:
        """``("keys", "create")`` for ``keys create``."""
        return tuple(self.name.split(" "))


@dataclass(frozen=True, slots=True)
class SettingOption:
    """A global CLI option (``--keystore DIR``) that sets ``[providers.SCHEME] SETTING``,
    over the config file and the environment."""

    flag: str
    scheme: str
    setting: str
    metavar: str
    help: str
    plugin: str


@dataclass
class Registered:
    """Everything registered, keyed by scheme, command name, flag or logger name (in order)."""

    providers: dict[str, ProviderInfo] = field(default_factory=dict)
    creators: dict[str, KeyCreator] = field(default_factory=dict)
    commands: dict[str, CommandInfo] = field(default_factory=dict)
    options: dict[str, SettingOption] = field(default_factory=dict)
    own_loggers: dict[str, None] = field(default_factory=dict)
    silenced_loggers: dict[str, None] = field(default_factory=dict)
    stores: dict[str, StoreInfo] = field(default_factory=dict)

    def add(self, other: Registered) -> None:
        """Take in what ``other`` holds (checked against this already)."""
        self.providers.update(other.providers)
        self.creators.update(other.creators)
        self.commands.update(other.commands)
        self.options.update(other.options)
        self.own_loggers.update(other.own_loggers)
        self.silenced_loggers.update(other.silenced_loggers)
        self.stores.update(other.stores)


class PluginRegistration:
    """The ``register`` callables one plugin's hooks get: each call is checked against what
    other plugins registered (``existing``) and collected in ``pending``, which the registry
    adds only once every hook has run without error."""

    def __init__(self, existing: Registered, plugin: str, distribution: str, version: str) -> None:
        self._existing = existing
        self._plugin = plugin
        self._distribution = distribution
        self._version = version
        self.pending = Registered()

    def _error(self, problem: str) -> PluginError:
        return PluginError(f"plugin {self._plugin!r} {problem}")

    def provider(
        self, scheme: str, factory: ProviderFactory, /, *, schema: SettingsSchema | None = None
    ) -> None:
        """``kmsenvelope_register_providers``: one URI scheme and its factory."""
        if not isinstance(scheme, str) or scheme_of(f"{scheme}:x") != scheme:
            raise self._error(f"registered an invalid scheme {scheme!r}")
        if not callable(factory):
            raise self._error(f"registered a non-callable for {scheme!r}")
        if schema is not None and (
            not isinstance(schema, SettingsSchema) or schema.scheme != scheme
        ):
            raise self._error(
                f"registered for {scheme!r} a schema that is not a SettingsSchema for {scheme!r}"
            )
        existing = self._existing.providers.get(scheme) or self.pending.providers.get(scheme)
        if existing is not None:
            raise self._taken(f"scheme {scheme!r}", existing)
        self.pending.providers[scheme] = ProviderInfo(
            scheme, self._plugin, self._distribution, self._version, factory, schema
        )

    def _taken(self, what: str, existing: ProviderInfo | StoreInfo) -> PluginError:
        """Two plugins registered one scheme: name both, and how to block one."""
        return PluginError(
            f"{what} is registered by both {existing.plugin!r} ({existing.distribution}) and "
            f"{self._plugin!r} ({self._distribution}); block one with {BLOCK_ENV}"
        )

    def store(self, url_scheme: str, factory: StoreFactory, /) -> None:
        """``kmsenvelope_register_stores``: one store URL scheme and its factory."""
        if not isinstance(url_scheme, str) or not _URL_SCHEME.match(url_scheme):
            raise self._error(
                f"registered an invalid store URL scheme {url_scheme!r} (lower-case, as in 's3')"
            )
        if not callable(factory):
            raise self._error(f"registered a non-callable store factory for {url_scheme!r}")
        existing = self._existing.stores.get(url_scheme) or self.pending.stores.get(url_scheme)
        if existing is not None:
            raise self._taken(f"store URL scheme {url_scheme!r}", existing)
        self.pending.stores[url_scheme] = StoreInfo(
            url_scheme, self._plugin, self._distribution, self._version, factory
        )

    def key_creator(self, scheme: str, creator: KeyCreator) -> None:
        """``kmsenvelope_register_key_creators``: what ``keys create URI`` calls for a scheme."""
        taken = scheme in self._existing.creators or scheme in self.pending.creators
        if taken or not callable(creator):
            raise self._error("registered a bad or duplicate key creator")
        self.pending.creators[scheme] = creator

    def command(
        self,
        name: str,
        handler: CommandHandler | None,
        /,
        *,
        help: str,
        description: str | None = None,
        arguments: AddArguments | None = None,
    ) -> None:
        """``kmsenvelope_register_commands``: one CLI command, or a group (``handler`` None)."""
        words = name.split(" ") if isinstance(name, str) else []
        if not words or not all(_COMMAND_WORD.match(w) for w in words):
            raise self._error(
                f"registered an invalid command name {name!r} (lower-case words: 'tool sub')"
            )
        if not isinstance(help, str) or not (description is None or isinstance(description, str)):
            raise self._error(f"registered the command {name!r} with a help that is not text")
        if not (handler is None or callable(handler)) or not (
            arguments is None or callable(arguments)
        ):
            raise self._error(f"registered the command {name!r} with a non-callable handler")
        existing = self._existing.commands.get(name) or self.pending.commands.get(name)
        if existing is not None:
            raise PluginError(
                f"command {name!r} is registered by both {existing.plugin!r} and "
                f"{self._plugin!r}; block one with {BLOCK_ENV}"
            )
        if len(words) > 1:
            group = self.pending.commands.get(" ".join(words[:-1]))
            if group is None or group.handler is not None:
                raise self._error(
                    f"registered the command {name!r} under {' '.join(words[:-1])!r}, which is "
                    "not a group it registered before (handler=None)"
                )
        self.pending.commands[name] = CommandInfo(
            name, self._plugin, help, handler, description, arguments
        )

    def setting_option(
        self, flag: str, scheme: str, setting: str, /, *, metavar: str, help: str
    ) -> None:
        """``kmsenvelope_register_setting_options``: a global option for one of its settings."""
        if not isinstance(flag, str) or not _OPTION_FLAG.match(flag):
            raise self._error(f"registered an invalid option {flag!r} (expected --lower-case)")
        provider = self.pending.providers.get(scheme)
        if provider is None:
            raise self._error(
                f"registered the option {flag} for scheme {scheme!r}, which it does not provide"
            )
        if provider.schema is not None and setting not in provider.schema.names:
            raise self._error(
                f"registered the option {flag} for {setting!r}, which the {scheme!r} settings "
                "schema does not declare"
            )
        if not isinstance(metavar, str) or not isinstance(help, str):
            raise self._error(f"registered the option {flag} with a metavar or help not text")
        existing = self._existing.options.get(flag) or self.pending.options.get(flag)
        if existing is not None:
            raise PluginError(
                f"option {flag} is registered by both {existing.plugin!r} and {self._plugin!r}; "
                f"block one with {BLOCK_ENV}"
            )
        self.pending.options[flag] = SettingOption(
            flag, scheme, setting, metavar, help, self._plugin
        )

    def loggers(self, *, own: Sequence[str] = (), silenced: Sequence[str] = ()) -> None:
        """``kmsenvelope_register_loggers``: the plugin's own loggers, and its SDKs' ones."""
        for kind, names, into in (
            ("own", own, self.pending.own_loggers),
            ("silenced", silenced, self.pending.silenced_loggers),
        ):
            if isinstance(names, str):
                raise self._error(f"registered {kind}={names!r}: expected a list of logger names")
            for logger in names:
                if not isinstance(logger, str) or not logger or logger == "root":
                    raise self._error(f"registered an invalid {kind} logger name {logger!r}")
                into[logger] = None

    def check_complete(self) -> None:
        """After the hooks ran: every group has a command under it (else it could never run)."""
        parents = {" ".join(c.words[:-1]) for c in self.pending.commands.values()}
        for command in self.pending.commands.values():
            if command.handler is None and command.name not in parents:
                raise self._error(f"registered the group {command.name!r} with no command in it")
