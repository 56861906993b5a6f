"""``rewrap`` (files in place) and ``migrate`` (bulk, concurrent, resumable)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError, MigrationIncompleteError
from ..migrate import (
    CallPolicy,
    FilesystemStore,
    GuardedEngine,
    Journal,
    MigrationProgress,
    MigrationReport,
    migrate,
)
from ..rewrapping import RewrapPlan
from .context import CliContext, Subcommands, parse_pairs

__all__ = ["add_migrate_commands"]

DEFAULT_JOURNAL = ".kmsenvelope-migrate.journal"


def _plan(args: argparse.Namespace, add: list[str] | None) -> RewrapPlan:
    return RewrapPlan.of(
        add=add or [],
        remove=args.remove or [],
        remove_providers=args.remove_provider or [],
        rotate=bool(getattr(args, "rotate", False)),
    )


def _engine(ctx: CliContext, args: argparse.Namespace) -> GuardedEngine:
    limits = {
        k: _positive(v, "--rate-limit")
        for k, v in parse_pairs(getattr(args, "rate_limit", None), "--rate-limit").items()
    }
    policy = CallPolicy(per_provider=getattr(args, "concurrency", 8), rate_limits=limits)
    return GuardedEngine(policy, registry=ctx.engine.registry, config=ctx.config)


def _positive(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{option} expects SCHEME=CALLS_PER_SECOND, got {text!r}") from None
    if value <= 0:
        raise ConfigError(f"{option} must be positive")
    return value


class _ProgressLine:
    """``done, failed, rate, ETA`` on one refreshed stderr line (terminals only)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last = 0.0

    def __call__(self, p: MigrationProgress) -> None:
        if p.elapsed - self.last < 0.1 and p.done + p.failed < p.total:
            return
        self.last = p.elapsed
        eta = f"{p.eta:.0f}s" if p.eta is not None else "?"
        sys.stderr.write(
            f"\r{self.label}: {p.done}/{p.total} done, {p.failed} failed, "
            f"{p.rate:.1f}/s, ETA {eta}   "
        )
        sys.stderr.flush()


def _print_summary(report: MigrationReport, quiet: bool, dry_run: bool) -> None:
    if quiet:
        return
    s = report.summary()
    if dry_run:
        for key, change in sorted(report.would_change.items()):
            print(f"would {change}: {key}", file=sys.stderr)
    print(
        f"{'dry run: ' if dry_run else ''}{s['total']} items: {s['migrated']} migrated, "
        f"{s['unchanged']} already up to date, {s['already_done']} done earlier, "
        f"{s['skipped']} skipped (not envelopes), {s['failed']} failed, "
        f"{s['conflicts']} changed by others; {s['seconds']}s",
        file=sys.stderr,
    )
    for key, reason in sorted(report.failed.items()):
        print(f"  failed: {key}: {reason}", file=sys.stderr)
    for key in sorted(report.conflicts):
        print(f"  changed during the job, not overwritten: {key}", file=sys.stderr)


def _finish(report: MigrationReport, args: argparse.Namespace, dry_run: bool) -> int:
    if getattr(args, "report", None):
        Path(args.report).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    _print_summary(report, args.quiet, dry_run)
    if not report.ok:
        raise MigrationIncompleteError(
            f"{len(report.failed)} envelope(s) failed and {len(report.conflicts)} changed during "
            "the job; nothing else was lost (details above"
            + (f" and in {args.report})" if getattr(args, "report", None) else ")")
        )
    return 0


def _rewrap(ctx: CliContext, args: argparse.Namespace) -> int:
    plan = _plan(args, args.add)
    if plan.empty:
        raise ConfigError("nothing to do: pass --add, --remove, --remove-provider or --rotate")
    for name in args.files:
        if not Path(name).is_file():
            raise ConfigError(f"{name} is not a file")
    store = FilesystemStore(args.files)
    report = migrate(store, _engine(ctx, args), plan, concurrency=1)
    if not args.quiet:
        for key in report.migrated:
            print(f"rewrapped {key}", file=sys.stderr)
    for key in report.skipped:
        report.failed[key] = "not a kmsenvelope envelope"
    report.skipped.clear()
    return _finish(report, args, dry_run=False)


def _migrate(ctx: CliContext, args: argparse.Namespace) -> int:
    plan = _plan(args, args.to)
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    journal_path = Path(args.journal)
    exclude = [journal_path] + ([Path(args.report)] if args.report else [])
    store = FilesystemStore(args.paths, exclude=exclude)
    engine = _engine(ctx, args)
    job = {
        "paths": [str(Path(p).resolve()) for p in args.paths],
        "to": list(args.to),
        "remove": list(args.remove or []),
        "remove_provider": list(args.remove_provider or []),
        "rotate": bool(args.rotate),
    }
    journal = None if args.dry_run else Journal.open(journal_path, job, resume=args.resume)
    if not args.dry_run:
        store.clean_temporary()
    bar = _ProgressLine("migrating") if sys.stderr.isatty() and not args.quiet else None
    try:
        report = migrate(
            store,
            engine,
            plan,
            concurrency=args.concurrency,
            journal=journal,
            dry_run=args.dry_run,
            progress=bar,
        )
    finally:
        if journal is not None:
            journal.close()
        if bar is not None:
            sys.stderr.write("\n")
    return _finish(report, args, dry_run=args.dry_run)


def add_migrate_commands(sub: Subcommands) -> None:
    """Register ``rewrap`` and ``migrate``."""
    p = sub.add_parser(
        "rewrap",
        help="change the recipients of envelope files in place (payload untouched)",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--add", action="extend", nargs="+", metavar="URI", help="recipient to add")
    p.add_argument(
        "--remove",
        action="extend",
        nargs="+",
        metavar="URI",
        help="recipient to drop (as recorded, or its versionless URI)",
    )
    p.add_argument(
        "--remove-provider",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="drop every recipient of this provider (scheme)",
    )
    p.add_argument(
        "--rotate", action="store_true", help="move each recipient to its key's current version"
    )
    p.set_defaults(handler=_rewrap)

    m = sub.add_parser(
        "migrate",
        help="re-wrap every envelope under files and directories, resumably",
    )
    m.add_argument("paths", nargs="+", metavar="PATH")
    m.add_argument(
        "--to",
        action="extend",
        nargs="+",
        metavar="URI",
        required=True,
        help="recipient(s) every envelope must have",
    )
    group = m.add_mutually_exclusive_group()
    group.add_argument(
        "--remove", action="extend", nargs="+", metavar="URI", help="recipient(s) to drop"
    )
    group.add_argument(
        "--remove-provider",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="drop every recipient of these providers",
    )
    m.add_argument("--rotate", action="store_true", help="also move to current key versions")
    m.add_argument(
        "--concurrency",
        type=int,
        default=8,
        metavar="N",
        help="envelopes in flight, and provider calls per provider (default 8)",
    )
    m.add_argument(
        "--rate-limit",
        action="append",
        metavar="SCHEME=N",
        help="at most N provider calls per second for a scheme (repeatable)",
    )
    m.add_argument(
        "--dry-run",
        action="store_true",
        help="report what would change; no provider calls, nothing written",
    )
    m.add_argument(
        "--resume",
        action="store_true",
        help="continue the job in the journal (a new job if there is none)",
    )
    m.add_argument(
        "--journal",
        default=DEFAULT_JOURNAL,
        metavar="FILE",
        help=f"job journal (default ./{DEFAULT_JOURNAL})",
    )
    m.add_argument("--report", metavar="FILE", help="write a JSON report of every outcome")
    m.set_defaults(handler=_migrate)
