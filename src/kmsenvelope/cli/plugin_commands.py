"""The commands and global setting options plugins registered, added to the argument parser.

A plugin never sees argparse's subparsers: it names a command (``"keys create"``) and declares
its arguments on the ``ArgumentParser`` it is given; grouping, the global options on every
command and dispatch to its handler are done here. A plugin that collides with a built-in
command or option, or fails while declaring its arguments, is a one-line ``PluginError``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from ..errors import PluginError
from ..plugins import CommandInfo, SettingOption
from ..registration import BLOCK_ENV
from .context import Subcommands, setting_dest

__all__ = ["add_plugin_commands", "add_setting_options"]


def add_setting_options(
    parser: argparse.ArgumentParser, options: Sequence[SettingOption], default: object
) -> None:
    """Add each plugin's global setting option (``--keystore DIR``) to ``parser``."""
    for option in options:
        try:
            parser.add_argument(
                option.flag,
                metavar=option.metavar,
                default=default,
                help=option.help,
                dest=setting_dest(option),
            )
        except argparse.ArgumentError as exc:
            raise PluginError(
                f"plugin {option.plugin!r} registered the option {option.flag}, which "
                f"'{parser.prog}' already has ({exc}) -- block it with {BLOCK_ENV}={option.plugin}"
            ) from None


def add_plugin_commands(
    sub: Subcommands,
    commands: Sequence[CommandInfo],
    add_global_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add plugin commands after the built-in ones in ``sub`` (groups come before their
    commands: the registry checked that), each with the global options."""
    parsers: dict[str, argparse.ArgumentParser] = {}
    groups: dict[str, Subcommands] = {}
    for command in commands:
        *parents, word = command.words
        if not parents and word in sub.choices:
            raise PluginError(
                f"plugin {command.plugin!r} registered the command {word!r}, which kmsenvelope "
                f"already has -- block it with {BLOCK_ENV}={command.plugin}"
            )
        group = " ".join(parents)
        try:
            if group and group not in groups:
                groups[group] = parsers[group].add_subparsers(
                    dest=f"{'_'.join(parents)}_command", required=True, metavar="COMMAND"
                )
            holder = groups[group] if group else sub
            parser = holder.add_parser(word, help=command.help, description=command.description)
            if command.arguments is not None:
                command.arguments(parser)
            add_global_options(parser)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {command.plugin!r} failed while adding the command {command.name!r}: "
                f"{type(exc).__name__}: {exc} -- block it with {BLOCK_ENV}={command.plugin}"
            ) from exc
        if command.handler is not None:
            parser.set_defaults(handler=command.handler)
        parsers[command.name] = parser
