"""``providers``, ``audit verify`` and ``config show``."""

from __future__ import annotations

import argparse
import json
import sys

from .context import CliContext, Subcommands

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


def _audit_verify(ctx: CliContext, args: argparse.Namespace) -> int:
    report = ctx.open_keystore().audit.verify()
    print(f"audit log OK: {report.entries} entries, chain intact")
    return 0


def _config_show(ctx: CliContext, args: argparse.Namespace) -> int:
    json.dump(ctx.config.redacted(), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def add_admin_commands(sub: Subcommands) -> None:
    """Register the administrative commands."""
    p = sub.add_parser("providers", help="list installed providers")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_providers)

    audit = sub.add_parser("audit", help="audit log commands")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    p = asub.add_parser("verify", help="check the local keystore's audit hash chain")
    p.set_defaults(handler=_audit_verify)

    config = sub.add_parser("config", help="configuration commands")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = csub.add_parser("show", help="print the effective config (secrets redacted)")
    p.set_defaults(handler=_config_show)
