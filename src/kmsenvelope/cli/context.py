"""Shared state for CLI commands: parsed global options, config and engine built lazily."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..config import Config, check_allowed_keys, load_config
from ..engine import Engine
from ..errors import ConfigError
from ..local.keystore import Keystore
from ..local.provider import keystore_dir, passphrase_from_env
from ..plugins import ProviderRegistry

__all__ = ["CliContext", "Subcommands", "parse_pairs"]

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


@dataclass
class CliContext:
    """Global options, with the config, registry and engine created on first use."""

    args: argparse.Namespace
    _config: Config | None = field(default=None, init=False)
    _engine: Engine | None = field(default=None, init=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            cfg = load_config(self.args.config, profile=self.args.profile)
            if self.args.keystore:
                providers = dict(cfg.providers)
                providers["local"] = MappingProxyType(
                    {**providers.get("local", {}), "keystore": self.args.keystore}
                )
                cfg = dataclasses.replace(cfg, providers=MappingProxyType(providers))
            self._config = cfg
        return self._config

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(
                registry=ProviderRegistry.load(),
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

    @property
    def keystore_path(self) -> Path:
        return keystore_dir(self.config.provider_settings("local"))

    def open_keystore(self, *, create: bool = False) -> Keystore:
        """Unlock the keystore; with ``create``, make it first if it does not exist."""
        path = self.keystore_path
        if create and not Keystore.exists(path):
            passphrase = passphrase_from_env(prompt="New keystore passphrase: ", confirm=True)
            return Keystore.create(path, passphrase)
        return Keystore.open(path, passphrase_from_env())
