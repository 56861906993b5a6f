"""The plugin host: plugins register providers, key creators, CLI commands, loggers and envelope
stores (pluggy).

Built-in providers (the local HSM) are loaded from the ``kmsenvelope`` entry-point group
exactly like third-party ones. Two environment variables control what loads:

* ``KMSENVELOPE_PLUGINS`` -- if set, a comma-separated allow-list of entry-point names;
  only those load (empty string: none).
* ``KMSENVELOPE_BLOCK_PLUGINS`` -- a comma-separated list of entry-point names never loaded.

A provider may declare its settings (``register(scheme, factory, schema=SettingsSchema(…))``, see
:mod:`kmsenvelope.settings`): the registry then refuses unknown or mistyped settings before the
factory runs, and ``config show`` prints only the settings declared non-secret.

The hooks and what their ``register`` callables accept are in :mod:`kmsenvelope.hooks`
(providers, key creators, CLI commands, global setting options, logger names, stores by URL
scheme); their names are
re-exported here. What one plugin registers is checked as it comes, and kept only if all of it
is valid: a plugin whose registration fails leaves the registry as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from .errors import ConfigError, PluginError, UnknownSchemeError
from .hooks import (
    PROJECT,
    AddArguments,
    CommandContext,
    CommandHandler,
    KeyCreator,
    PluginHooks,
    RegisterCommand,
    RegisterKeyCreator,
    RegisterLoggers,
    RegisterProvider,
    RegisterSettingOption,
    RegisterStore,
    StoreFactory,
    hookimpl,
    hookspec,
)
from .kek import KeyEncryptionKey, ProviderFactory, scheme_of
from .registration import (
    BLOCK_ENV,
    CommandInfo,
    PluginRegistration,
    ProviderInfo,
    Registered,
    SettingOption,
    StoreInfo,
)
from .settings import SettingsSchema

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "AddArguments",
    "CommandContext",
    "CommandHandler",
    "CommandInfo",
    "KeyCreator",
    "ProviderInfo",
    "ProviderRegistry",
    "RegisterCommand",
    "RegisterKeyCreator",
    "RegisterLoggers",
    "RegisterProvider",
    "RegisterSettingOption",
    "RegisterStore",
    "SettingOption",
    "StoreFactory",
    "StoreInfo",
    "hookimpl",
    "hookspec",
]

ENTRY_POINT_GROUP = "kmsenvelope"
ALLOW_ENV = "KMSENVELOPE_PLUGINS"

BUILT_IN_STORES = "stores"
"""Entry-point name of the built-in stores plugin (:mod:`kmsenvelope.migrate.plugin`)."""
_STORE_EXTRAS = {
    "s3": ("s3", "aws-kms"),
    "az": ("azure-blob", "azure-kv"),
    "postgresql": ("postgres", BUILT_IN_STORES),
    "postgres": ("postgres", BUILT_IN_STORES),
    "sqlite": (None, BUILT_IN_STORES),
}
"""Store URL schemes of kmsenvelope itself: the extra that installs what each needs (None:
nothing) and the plugin that registers it."""


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


class ProviderRegistry:
    """Maps URI schemes to provider factories, filled by plugins (with their commands,
    setting options and logger names).

    ``ProviderRegistry.load()`` reads entry points (honouring the allow/block variables);
    ``ProviderRegistry()`` starts empty, and ``add_plugin`` registers a module or object
    in code -- which is how tests get a registry that holds only what they chose.
    """

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(PluginHooks)
        self._registered = Registered()
        self._broken: list[PluginError] = []

    @classmethod
    def load(
        cls,
        *,
        allow: Iterable[str] | None = None,
        block: Iterable[str] | None = None,
        skip_broken: bool = False,
    ) -> ProviderRegistry:
        """A registry with every plugin from the ``kmsenvelope`` entry-point group.

        ``allow``/``block`` default to ``KMSENVELOPE_PLUGINS``/``KMSENVELOPE_BLOCK_PLUGINS``.
        A plugin that fails to load raises ``PluginError``; with ``skip_broken`` it is left out
        and its error kept in ``broken`` (the CLI reports it when a command needs providers).
        """
        allowed = set(allow) if allow is not None else _names_from_env(ALLOW_ENV)
        blocked = set(block) if block is not None else (_names_from_env(BLOCK_ENV) or set())
        registry = cls()
        seen: set[str] = set()
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:
                continue  # the same distribution visible twice on sys.path
            seen.add(ep.name)
            if ep.name in blocked or (allowed is not None and ep.name not in allowed):
                continue
            try:
                registry._load_entry_point(ep)
            except PluginError as exc:
                if not skip_broken:
                    raise
                registry._broken.append(exc)
        return registry

    def _load_entry_point(self, ep: EntryPoint) -> None:
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
                f" -- block it with {BLOCK_ENV}={ep.name}"
            ) from exc
        dist = ep.dist
        self.add_plugin(
            plugin,
            name=ep.name,
            distribution=dist.name if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        )

    def add_plugin(
        self,
        plugin: ModuleType | object,
        *,
        name: str,
        distribution: str = "(in code)",
        version: str = "",
    ) -> None:
        """Register a plugin object or module and collect what it registers (all or nothing:
        a plugin whose registration fails leaves the registry as it was)."""
        if self._pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already registered")
        self._pm.register(plugin, name=name)
        others = [p for p in self._pm.get_plugins() if p is not plugin]
        registration = PluginRegistration(self._registered, name, distribution, version)
        hooks: list[tuple[str, object]] = [
            ("kmsenvelope_register_providers", registration.provider),
            ("kmsenvelope_register_key_creators", registration.key_creator),
            ("kmsenvelope_register_commands", registration.command),
            ("kmsenvelope_register_setting_options", registration.setting_option),
            ("kmsenvelope_register_loggers", registration.loggers),
            ("kmsenvelope_register_stores", registration.store),
        ]
        try:
            for hook, register in hooks:
                self._pm.subset_hook_caller(hook, others)(register=register)
            registration.check_complete()
        except Exception as exc:
            self._pm.unregister(name=name)
            if isinstance(exc, PluginError):
                raise
            raise PluginError(
                f"plugin {name!r} failed while registering providers: {type(exc).__name__}: {exc}"
            ) from exc
        self._registered.add(registration.pending)

    def register(
        self,
        scheme: str,
        factory: ProviderFactory,
        *,
        plugin: str = "(in code)",
        schema: SettingsSchema | None = None,
    ) -> None:
        """Register one factory (and optionally its settings schema) without a plugin object."""
        holder = _SingleProvider(scheme, factory, schema)
        self.add_plugin(holder, name=plugin if plugin != "(in code)" else f"(in code:{scheme})")

    @property
    def providers(self) -> Mapping[str, ProviderInfo]:
        """Registered providers by scheme."""
        return dict(self._registered.providers)

    @property
    def schemas(self) -> Mapping[str, SettingsSchema]:
        """The settings schema of each registered provider that declares one, by scheme."""
        return {s: i.schema for s, i in self._registered.providers.items() if i.schema is not None}

    @property
    def commands(self) -> tuple[CommandInfo, ...]:
        """Plugin commands in registration order (each group before the commands under it)."""
        return tuple(self._registered.commands.values())

    @property
    def setting_options(self) -> tuple[SettingOption, ...]:
        """Global CLI options that set a provider setting, in registration order."""
        return tuple(self._registered.options.values())

    @property
    def own_loggers(self) -> tuple[str, ...]:
        """Plugins' own logger names: ``-v``/``-vv`` turn them on with ``kmsenvelope``'s."""
        return tuple(self._registered.own_loggers)

    @property
    def silenced_loggers(self) -> tuple[str, ...]:
        """SDK logger names plugins declared: never below WARNING in the CLI, whatever ``-v``."""
        return tuple(self._registered.silenced_loggers)

    @property
    def stores(self) -> Mapping[str, StoreInfo]:
        """Registered envelope stores by URL scheme."""
        return dict(self._registered.stores)

    def store_factory(self, url_scheme: str) -> StoreFactory:
        """The store factory for ``url_scheme``, or a ``ConfigError`` listing what is installed
        (and, for a scheme of kmsenvelope's own stores, how to get it)."""
        info = self._registered.stores.get(url_scheme)
        if info is not None:
            return info.factory
        known = ", ".join(sorted(self._registered.stores)) or "none"
        hint = ""
        if url_scheme in _STORE_EXTRAS:
            extra, plugin = _STORE_EXTRAS[url_scheme]
            allow = f"allow the {plugin!r} plugin ({ALLOW_ENV}, {BLOCK_ENV})"
            hint = (
                f"; install kmsenvelope[{extra}] (or, if installed, {allow})"
                if extra
                else f"; it is built in: {allow}"
            )
        raise ConfigError(
            f"no store is installed for URL scheme {url_scheme!r} (installed: {known}){hint}"
        )

    @property
    def broken(self) -> tuple[PluginError, ...]:
        """The errors of plugins ``load(skip_broken=True)`` left out, in load order."""
        return tuple(self._broken)

    def key_creator(self, scheme: str) -> KeyCreator:
        """The key creator a plugin registered for ``scheme``, or ``UnknownSchemeError``."""
        self.factory_for(scheme)  # unknown scheme: the usual error listing what is installed
        creator = self._registered.creators.get(scheme)
        if creator is None:
            raise UnknownSchemeError(
                f"provider {scheme!r} cannot create keys from the command line; create the key "
                "with the provider's own tools (see its documentation)"
            )
        return creator

    def factory_for(self, scheme: str) -> ProviderFactory:
        """The factory for ``scheme``, or ``UnknownSchemeError`` listing what is installed."""
        info = self._registered.providers.get(scheme)
        if info is None:
            known = ", ".join(sorted(self._registered.providers)) or "none"
            raise UnknownSchemeError(
                f"no provider is installed for scheme {scheme!r} (installed: {known})"
            )
        return info.factory

    def open(self, uri: str, settings: Mapping[str, Any]) -> KeyEncryptionKey:
        """Open the KEK named by ``uri`` through its provider's factory."""
        try:
            scheme = scheme_of(uri)
        except ValueError as exc:
            raise UnknownSchemeError(str(exc)) from None
        factory = self.factory_for(scheme)
        schema = self._registered.providers[scheme].schema
        if schema is not None:
            schema.parse(settings)  # unknown or mistyped settings: ConfigError before the factory
        return factory(uri, settings)


class _SingleProvider:
    """Adapter so ``ProviderRegistry.register`` goes through the same hook as plugins."""

    def __init__(
        self, scheme: str, factory: ProviderFactory, schema: SettingsSchema | None
    ) -> None:
        self._scheme = scheme
        self._factory = factory
        self._schema = schema

    @hookimpl
    def kmsenvelope_register_providers(self, register: RegisterProvider) -> None:
        register(self._scheme, self._factory, schema=self._schema)
