"""``providers``, ``audit verify [--anchor VALUE]``, ``audit anchor`` and ``config show``."""

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
    report = ctx.open_keystore().verify_audit(args.anchor)
    anchored = ", not rolled back past the anchor" if args.anchor is not None else ""
    print(f"audit log OK: {report.entries} entries, chain intact{anchored}")
    return 0


def _audit_anchor(ctx: CliContext, args: argparse.Namespace) -> int:
    """Print the verified audit head, to be kept outside the keystore (see ``verify --anchor``)."""
    report = ctx.open_keystore().verify_audit()
    print(report.anchor)
    if not args.quiet:
        print(
            "kmsenvelope: keep this anchor outside the keystore; 'kmsenvelope audit verify "
            "--anchor VALUE' proves the log was not rolled back past it",
            file=sys.stderr,
        )
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
    for scheme, schema in schemas.items():  # a misspelt setting is an error here too
        if scheme in ctx.config.providers:
            schema.parse(ctx.config.provider_settings(scheme))
    json.dump(ctx.config.redacted(schemas), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def add_admin_commands(sub: Subcommands) -> None:
    """Register the administrative commands."""
    p = sub.add_parser("providers", help="list installed providers")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_providers)

    audit = sub.add_parser("audit", help="audit log commands")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    p = asub.add_parser(
        "verify",
        help="check the local keystore's audit hash chain (exit 12 if broken or rolled back)",
    )
    p.add_argument(
        "--anchor",
        metavar="VALUE",
        default=None,
        help="an anchor printed earlier by 'audit anchor': fail unless its entry is still in "
        "the chain (the log was not rolled back past it)",
    )
    p.set_defaults(handler=_audit_verify)
    p = asub.add_parser(
        "anchor",
        help="print the current audit head (SEQ:HASH) to keep outside the keystore, for "
        "'audit verify --anchor'",
    )
    p.set_defaults(handler=_audit_anchor)

    config = sub.add_parser("config", help="configuration commands")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = csub.add_parser("show", help="print the effective config (secrets redacted)")
    p.set_defaults(handler=_config_show)
