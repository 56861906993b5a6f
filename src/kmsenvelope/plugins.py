"""The plugin host: providers register factories by URI scheme through pluggy.

Built-in providers (the local HSM) are loaded from the ``kmsenvelope`` entry-point group
exactly like third-party ones. Two environment variables control what loads:

* ``KMSENVELOPE_PLUGINS`` -- if set, a comma-separated allow-list of entry-point names;
  only those load (empty string: none).
* ``KMSENVELOPE_BLOCK_PLUGINS`` -- a comma-separated list of entry-point names never loaded.

A provider may declare its settings (``register(scheme, factory, schema=SettingsSchema(…))``, see
:mod:`kmsenvelope.settings`): the registry then refuses unknown or mistyped settings before the
factory runs, and ``config show`` prints only the settings declared non-secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, Protocol

import pluggy

from .errors import PluginError, UnknownSchemeError
from .kek import KeyEncryptionKey, ProviderFactory, scheme_of
from .settings import SettingsSchema

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "KeyCreator",
    "ProviderInfo",
    "ProviderRegistry",
    "RegisterKeyCreator",
    "RegisterProvider",
    "hookimpl",
    "hookspec",
]

PROJECT = "kmsenvelope"
ENTRY_POINT_GROUP = "kmsenvelope"
ALLOW_ENV = "KMSENVELOPE_PLUGINS"
BLOCK_ENV = "KMSENVELOPE_BLOCK_PLUGINS"

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


class _Hookspecs:
    """Hooks a kmsenvelope plugin may implement."""

    @hookspec
    def kmsenvelope_register_providers(self, register: RegisterProvider) -> None:
        """Call ``register(scheme, factory)`` once per URI scheme this plugin provides
        (``schema=`` its :class:`~kmsenvelope.settings.SettingsSchema`, if it declares one)."""

    @hookspec
    def kmsenvelope_register_key_creators(self, register: RegisterKeyCreator) -> None:
        """Optional: call ``register(scheme, creator)`` for schemes whose keys
        ``kmsenvelope keys create URI`` may create (``creator(uri, settings, key_type)``)."""


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """One registered provider: its scheme, and the plugin and distribution it came from."""

    scheme: str
    plugin: str
    distribution: str
    version: str
    factory: ProviderFactory
    schema: SettingsSchema | None = None


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


class ProviderRegistry:
    """Maps URI schemes to provider factories, filled by plugins.

    ``ProviderRegistry.load()`` reads entry points (honouring the allow/block variables);
    ``ProviderRegistry()`` starts empty, and ``add_plugin`` registers a module or object
    in code -- which is how tests get a registry that holds only what they chose.
    """

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(_Hookspecs)
        self._providers: dict[str, ProviderInfo] = {}
        self._creators: dict[str, KeyCreator] = {}

    @classmethod
    def load(
        cls,
        *,
        allow: Iterable[str] | None = None,
        block: Iterable[str] | None = None,
    ) -> ProviderRegistry:
        """A registry with every plugin from the ``kmsenvelope`` entry-point group.

        ``allow``/``block`` default to ``KMSENVELOPE_PLUGINS``/``KMSENVELOPE_BLOCK_PLUGINS``.
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
            registry._load_entry_point(ep)
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
        """Register a plugin object or module and collect the providers it registers."""
        if self._pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already registered")
        self._pm.register(plugin, name=name)
        others = [p for p in self._pm.get_plugins() if p is not plugin]
        caller = self._pm.subset_hook_caller("kmsenvelope_register_providers", others)

        def register(
            scheme: str, factory: ProviderFactory, /, *, schema: SettingsSchema | None = None
        ) -> None:
            if not isinstance(scheme, str) or scheme_of(f"{scheme}:x") != scheme:
                raise PluginError(f"plugin {name!r} registered an invalid scheme {scheme!r}")
            if not callable(factory):
                raise PluginError(f"plugin {name!r} registered a non-callable for {scheme!r}")
            if schema is not None and (
                not isinstance(schema, SettingsSchema) or schema.scheme != scheme
            ):
                raise PluginError(
                    f"plugin {name!r} registered for {scheme!r} a schema that is not a "
                    f"SettingsSchema for {scheme!r}"
                )
            existing = self._providers.get(scheme)
            if existing is not None:
                raise PluginError(
                    f"scheme {scheme!r} is registered by both {existing.plugin!r} "
                    f"({existing.distribution}) and {name!r} ({distribution}); "
                    f"block one with {BLOCK_ENV}"
                )
            self._providers[scheme] = ProviderInfo(
                scheme, name, distribution, version, factory, schema
            )

        def register_creator(scheme: str, creator: KeyCreator) -> None:
            if scheme in self._creators or not callable(creator):
                raise PluginError(f"plugin {name!r} registered a bad or duplicate key creator")
            self._creators[scheme] = creator

        creators = self._pm.subset_hook_caller("kmsenvelope_register_key_creators", others)
        try:
            caller(register=register)
            creators(register=register_creator)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {name!r} failed while registering providers: {type(exc).__name__}: {exc}"
            ) from exc

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
        return dict(self._providers)

    @property
    def schemas(self) -> Mapping[str, SettingsSchema]:
        """The settings schema of each registered provider that declares one, by scheme."""
        return {s: i.schema for s, i in self._providers.items() if i.schema is not None}

    def key_creator(self, scheme: str) -> KeyCreator:
        """The key creator a plugin registered for ``scheme``, or ``UnknownSchemeError``."""
        self.factory_for(scheme)  # unknown scheme: the usual error listing what is installed
        creator = self._creators.get(scheme)
        if creator is None:
            raise UnknownSchemeError(
                f"provider {scheme!r} cannot create keys from the command line; create the key "
                "with the provider's own tools (see its documentation)"
            )
        return creator

    def factory_for(self, scheme: str) -> ProviderFactory:
        """The factory for ``scheme``, or ``UnknownSchemeError`` listing what is installed."""
        info = self._providers.get(scheme)
        if info is None:
            known = ", ".join(sorted(self._providers)) or "none"
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
        schema = self._providers[scheme].schema
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
