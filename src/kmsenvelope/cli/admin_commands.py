"""``providers`` and ``config show``: what is installed and configured."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError
from .context import CliContext, Subcommands
from .safe_text import printable

__all__ = ["add_admin_commands"]


def _providers(ctx: CliContext, args: argparse.Namespace) -> int:
    infos = sorted(ctx.engine.registry.providers.values(), key=lambda i: i.scheme)
    if args.json:
        rows = [
            {
                "scheme": i.scheme,
                "plugin": i.plugin,
                "distribution": i.distribution,
                "version": i.version,
            }
            for i in infos
        ]
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'SCHEME':<16} {'DISTRIBUTION':<28} VERSION")
    for i in infos:
        print(f"{i.scheme:<16} {i.distribution:<28} {i.version}")
    return 0


def _config_show(ctx: CliContext, args: argparse.Namespace) -> int:
    """Only settings an installed provider declares non-secret are shown (an allow-list)."""
    from ..config import ignored_local_config

    ignored = ignored_local_config(ctx.config.path)
    if ignored is not None:
        print(
            f"kmsenvelope: warning: {ignored} is ignored: the configuration comes only from "
            "--config, KMSENVELOPE_CONFIG or the user config file",
            file=sys.stderr,
        )
    schemas = ctx.engine.registry.schemas
    for scheme, schema in schemas.items():  # show the config anyway, but name each mistake
        if scheme in ctx.config.providers:
            try:
                schema.parse(ctx.config.provider_settings(scheme))
            except ConfigError as exc:
                print(f"kmsenvelope: warning: {printable(str(exc))}", file=sys.stderr)
    json.dump(ctx.config.redacted(schemas), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def add_admin_commands(sub: Subcommands) -> None:
    """Register the administrative commands."""
    p = sub.add_parser("providers", help="list installed providers")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_providers)

    config = sub.add_parser("config", help="configuration commands")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = csub.add_parser("show", help="print the effective config (secrets redacted)")
    p.set_defaults(handler=_config_show)
