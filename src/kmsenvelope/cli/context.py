"""Shared state for CLI commands: parsed global options, the plugins, and config and engine
built lazily (a plugin command's handler gets it as its ``CommandContext``)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..config import Config, check_allowed_keys, load_config
from ..engine import Engine
from ..errors import ConfigError
from ..plugins import ProviderRegistry, SettingOption

__all__ = ["CliContext", "Subcommands", "parse_pairs", "setting_dest"]

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[Any]
else:
    Subcommands = argparse._SubParsersAction
"""What ``add_subparsers`` returns; each command module adds its parsers to it."""


def parse_pairs(items: list[str] | None, option: str) -> dict[str, str]:
    """``["k=v", …]`` into a dict; ``ConfigError`` for a malformed or repeated item."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} expects KEY=VALUE, got {item!r}")
        if key in out:
            raise ConfigError(f"{option} repeats key {key!r}")
        out[key] = value
    return out


def setting_dest(option: SettingOption) -> str:
    """Where argparse keeps a plugin's setting option (``--keystore``): no command's name."""
    return f"setting:{option.scheme}:{option.setting}"


def _apply_setting_options(
    cfg: Config, args: argparse.Namespace, options: Sequence[SettingOption]
) -> Config:
    """``cfg`` with the setting options given on the command line over its provider settings."""
    given = [(o, value) for o in options if (value := getattr(args, setting_dest(o), None))]
    if not given:
        return cfg
    providers = dict(cfg.providers)
    for option, value in given:
        providers[option.scheme] = MappingProxyType(
            {**providers.get(option.scheme, {}), option.setting: value}
        )
    return dataclasses.replace(cfg, providers=MappingProxyType(providers))


@dataclass
class CliContext:
    """Global options and the plugin registry, with the config and engine created on first
    use (what a plugin command's handler gets: ``kmsenvelope.hooks.CommandContext``)."""

    args: argparse.Namespace
    registry: ProviderRegistry
    _config: Config | None = field(default=None, init=False)
    _engine: Engine | None = field(default=None, init=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            cfg = load_config(self.args.config, profile=self.args.profile)
            self._config = _apply_setting_options(cfg, self.args, self.registry.setting_options)
        return self._config

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            if self.registry.broken:  # a plugin failed to load: fail as loading it here would
                raise self.registry.broken[0]
            self._engine = Engine(
                registry=self.registry,
                config=self.config,
                allow=self.allow_patterns,
                trusted_keys=self.named_keys,
            )
        return self._engine

    @property
    def allow_patterns(self) -> tuple[str, ...]:
        """``--allow PATTERN`` values: more keys decryption may contact (validated)."""
        patterns = tuple(getattr(self.args, "allow", None) or ())
        return check_allowed_keys(patterns, source="--allow") if patterns else ()

    @property
    def named_keys(self) -> tuple[str, ...]:
        """Key URIs named on the command line (``--to``, ``--add``): the user vouches for them,
        so decryption may contact them (and their versions) to unwrap."""
        named: list[str] = []
        for option in ("to", "add"):
            named += [u for u in getattr(self.args, option, None) or () if isinstance(u, str)]
        return tuple(named)
