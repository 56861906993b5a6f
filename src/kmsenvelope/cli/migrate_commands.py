"""``rewrap`` (files in place) and ``migrate`` (bulk, concurrent, resumable).

Both take files and directories, or one store URL (``SCHEME://…``, e.g.
``sqlite:///app.db?table=T&key=ID&column=ENV``) opened through the stores plugins register.
``migrate STORE_URL --dask ADDRESS`` (or ``--dask local``) runs the job in shards on a Dask
cluster (:mod:`kmsenvelope.migrate.distributed`; dask is imported only then).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError, MigrationIncompleteError
from ..migrate import (
    CallPolicy,
    EnvelopeStore,
    FilesystemStore,
    GuardedEngine,
    Journal,
    MigrationInterrupted,
    MigrationProgress,
    MigrationReport,
    StoreURL,
    default_journal_path,
    is_store_url,
    migrate,
    open_store,
    parse_store_url,
)
from ..migrate.distributed import DaskSession, dask_session, migrate_sharded
from ..migrate.fs_store import LINK_SKIPPED
from ..migrate.runner import NOT_AN_ENVELOPE, SHARD_SIZE
from ..migrate.sqlite_store import NOT_TEXT_SKIPPED, NULL_SKIPPED
from ..rewrapping import RewrapPlan
from .context import CliContext, Subcommands, parse_pairs, setting_dest
from .progress import ProgressBar, end_status_line
from .safe_text import printable
from .signals import exit_code_for

__all__ = ["add_migrate_commands"]


def _plan(args: argparse.Namespace, add: list[str] | None) -> RewrapPlan:
    return RewrapPlan.of(
        add=add or [],
        remove=args.remove or [],
        remove_providers=args.remove_provider or [],
        rotate=bool(getattr(args, "rotate", False)),
    )


def _engine(ctx: CliContext, args: argparse.Namespace) -> GuardedEngine:
    """The command line's engine (its trust: --allow, --to/--add keys, config) with the job's
    concurrency bound and rate limits on every provider call."""
    limits = {
        k: _positive(v, "--rate-limit")
        for k, v in parse_pairs(getattr(args, "rate_limit", None), "--rate-limit").items()
    }
    policy = CallPolicy(per_provider=getattr(args, "concurrency", 8), rate_limits=limits)
    return GuardedEngine.around(ctx.engine, policy)


def _positive(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{option} expects SCHEME=CALLS_PER_SECOND, got {text!r}") from None
    if value <= 0:
        raise ConfigError(f"{option} must be positive")
    return value


class _MigrationBar:
    """Items done (and failed), rate and ETA on the shared status line (terminals only)."""

    def __init__(self) -> None:
        self.bar: ProgressBar | None = None

    def __call__(self, p: MigrationProgress) -> None:
        if self.bar is None:
            self.bar = ProgressBar(p.total, "migrating", unit="items")
            self.bar.start -= p.elapsed  # the job started before its first item finished
        self.bar.total = None if p.listing else p.total  # no percentage or ETA until listed
        self.bar.set(p.done + p.failed, f"{p.failed} failed" if p.failed else "")

    def close(self, complete: bool) -> None:
        if self.bar is not None:
            self.bar.close(complete)


_SKIP_LABELS = {
    NOT_AN_ENVELOPE: "not envelopes",
    LINK_SKIPPED: "symbolic links",
    "not a regular file": "not regular files",
    NULL_SKIPPED: "NULLs",
    NOT_TEXT_SKIPPED: "not TEXT or BLOB",
}
_UNLISTED_SKIPS = frozenset({NOT_AN_ENVELOPE, NULL_SKIPPED})
"""Skip reasons that are many and expected: counted in the summary, listed only in the report."""


def _store_url(targets: list[str]) -> StoreURL | None:
    """The store URL among the command's targets, if one is (then it must be the only one)."""
    urls = [t for t in targets if is_store_url(t)]
    if not urls:
        return None
    if len(targets) > 1:
        raise ConfigError("a store URL must be the only PATH of its job: run one job per store")
    return parse_store_url(urls[0])


def _open_store(ctx: CliContext, url: StoreURL) -> EnvelopeStore:
    """The store ``url`` names, through the installed store plugins (a plugin that failed to
    load is reported first: it may be the one that provides the scheme)."""
    if url.scheme not in ctx.registry.stores and ctx.registry.broken:
        raise ctx.registry.broken[0]
    return open_store(url, ctx.registry, ctx.config)


def _close(store: EnvelopeStore) -> None:
    """Close a store that holds a connection (the store protocol does not require ``close``)."""
    close = getattr(store, "close", None)
    if callable(close):
        close()


def _skipped_counts(report: MigrationReport) -> str:
    """``N skipped (not envelopes)``, or by reason when items were skipped for several."""
    counts: dict[str, int] = {}
    for key in report.skipped:
        label = _SKIP_LABELS.get(report.skip_reasons.get(key, NOT_AN_ENVELOPE), "other")
        counts[label] = counts.get(label, 0) + 1
    if len(counts) > 1:
        detail = ", ".join(f"{n} {label}" for label, n in counts.items())
    else:
        detail = next(iter(counts), "not envelopes")
    return f"{len(report.skipped)} skipped ({detail})"


def _print_summary(report: MigrationReport, quiet: bool, dry_run: bool) -> None:
    if quiet:
        return
    s = report.summary()
    if dry_run:
        for key, change in sorted(report.would_change.items()):
            print(f"would {printable(change)}: {printable(key)}", file=sys.stderr)
        counts = f"{s['would_change']} would be migrated, "
    else:
        counts = f"{s['migrated']} migrated, "
    left = f"interrupted with {s['left']} not done; " if report.interrupted else ""
    earlier = "" if dry_run else f"{s['already_done']} done earlier, "
    changed = "" if dry_run else f", {s['conflicts']} changed by others"
    print(
        f"{'dry run: ' if dry_run else ''}{s['total']} items: {counts}"
        f"{s['unchanged']} already up to date, {earlier}"
        f"{_skipped_counts(report)}, {s['failed']} failed{changed}; "
        f"{left}{s['seconds']}s",
        file=sys.stderr,
    )
    for key, reason in sorted(report.failed.items()):
        print(f"  failed: {printable(key)}: {printable(reason)}", file=sys.stderr)
    for key in sorted(report.conflicts):
        print(f"  changed during the job, not overwritten: {printable(key)}", file=sys.stderr)
    for key in sorted(report.skipped):
        reason = report.skip_reasons.get(key, NOT_AN_ENVELOPE)
        if reason not in _UNLISTED_SKIPS:  # many and expected; the report lists them
            print(f"  skipped {printable(reason)}: {printable(key)}", file=sys.stderr)


def _write_report(report: MigrationReport, args: argparse.Namespace) -> None:
    if getattr(args, "report", None):
        Path(args.report).write_text(json.dumps(report.to_json(), indent=2) + "\n")


def _finish(report: MigrationReport, args: argparse.Namespace, dry_run: bool) -> int:
    _write_report(report, args)
    _print_summary(report, args.quiet, dry_run)
    if not report.ok:
        raise MigrationIncompleteError(
            f"{len(report.failed)} envelope(s) failed and {len(report.conflicts)} changed during "
            "the job; nothing else was lost (details above"
            + (f" and in {printable(args.report)})" if getattr(args, "report", None) else ")")
        )
    return 0


RESUME_HINT = "; run the same command with --resume to continue"
RERUN_HINT = (
    "; run the same command again to continue (envelopes already re-wrapped are skipped "
    "after reading their header)"
)


def _interrupted(
    stop: MigrationInterrupted, args: argparse.Namespace, dry_run: bool, hint: str = ""
) -> int:
    """Ctrl-C (or SIGTERM/SIGHUP): the job has stopped cleanly; write the report, say what was
    done and how to go on (``hint``); exit 130 (128 + the signal number)."""
    end_status_line()
    _write_report(stop.report, args)
    _print_summary(stop.report, args.quiet, dry_run)
    print(f"kmsenvelope: interrupted{hint}", file=sys.stderr)
    return exit_code_for(stop.interrupt)


def _rewrap(ctx: CliContext, args: argparse.Namespace) -> int:
    plan = _plan(args, args.add)
    if plan.empty:
        raise ConfigError("nothing to do: pass --add, --remove, --remove-provider or --rotate")
    url = _store_url(args.files)
    if url is None:
        for name in args.files:
            if not Path(name).is_file():
                raise ConfigError(f"{printable(name)} is not a file")
    store = FilesystemStore(args.files) if url is None else _open_store(ctx, url)
    try:
        report = migrate(store, _engine(ctx, args), plan, concurrency=1)
    except MigrationInterrupted as stop:
        return _interrupted(stop, args, dry_run=False)
    finally:
        _close(store)
    if not args.quiet:
        for key in report.migrated:
            print(f"rewrapped {printable(key)}", file=sys.stderr)
    if url is not None:  # rows that are NULL or not envelopes: left alone, as migrate does
        return _finish(report, args, dry_run=False)
    for key in report.skipped:
        reason = report.skip_reasons.get(key, NOT_AN_ENVELOPE)
        report.failed[key] = "not a kmsenvelope envelope" if reason == NOT_AN_ENVELOPE else reason
    report.skipped.clear()
    return _finish(report, args, dry_run=False)


def _job(args: argparse.Namespace, url: StoreURL | None) -> dict[str, object]:
    """What the job is (its store and plan), order-free: it names the default journal."""
    where: dict[str, object] = (
        {"store": url.identity}
        if url is not None
        else {"paths": sorted({str(Path(p).resolve()) for p in args.paths})}
    )
    return {
        **where,
        "to": sorted(set(args.to)),
        "remove": sorted(set(args.remove or [])),
        "remove_provider": sorted(set(args.remove_provider or [])),
        "rotate": bool(args.rotate),
    }


def _migrate(ctx: CliContext, args: argparse.Namespace) -> int:
    plan = _plan(args, args.to)
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    url = _store_url(args.paths)
    if args.dask is not None:
        return _migrate_on_dask(ctx, args, plan, url)
    job = _job(args, url)
    journal_path = None
    if not args.dry_run:
        journal_path = Path(args.journal) if args.journal else default_journal_path(job)
    exclude = [p for p in (journal_path, Path(args.report) if args.report else None) if p]
    # A folder never migrates its own journal (or report).
    store = FilesystemStore(args.paths, exclude=exclude) if url is None else _open_store(ctx, url)
    try:
        return _run_migration(store, _engine(ctx, args), plan, args, (journal_path, job))
    finally:
        _close(store)


def _run_migration(
    store: EnvelopeStore,
    engine: GuardedEngine,
    plan: RewrapPlan,
    args: argparse.Namespace,
    journaled: tuple[Path | None, dict[str, object]],
) -> int:
    """Run the job on an opened store, with its journal at ``journaled`` (the path, None for
    a dry run, and what the job is)."""
    journal_path, job = journaled
    journal = None
    if journal_path is not None:
        journal = Journal.open(journal_path, job, resume=args.resume)
        if isinstance(store, FilesystemStore):
            store.clean_temporary()
    bar = _MigrationBar() if sys.stderr.isatty() and not args.quiet else None
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
    except MigrationInterrupted as stop:
        if bar is not None:
            bar.close(complete=False)
        return _interrupted(stop, args, args.dry_run, RESUME_HINT if journal is not None else "")
    finally:
        if journal is not None:
            journal.close()
    if bar is not None:
        bar.close(complete=True)
    return _finish(report, args, dry_run=args.dry_run)


def _migrate_on_dask(
    ctx: CliContext, args: argparse.Namespace, plan: RewrapPlan, url: StoreURL | None
) -> int:
    """``migrate STORE_URL --dask ADDRESS``: the keys are listed here, with this machine's
    credentials, and re-wrapped in shards by the cluster's workers, each with its own
    configuration and credentials. No journal: a re-run skips what is done by its header."""
    if url is None:
        raise ConfigError(
            "--dask needs a store URL (s3://…, az://…, postgresql://…, sqlite:///…): the "
            "workers open the store themselves; for files and folders, run without --dask"
        )
    if args.resume or args.journal:
        raise ConfigError(
            "--resume and --journal do not apply with --dask: an envelope already re-wrapped "
            "is skipped after reading its header, so run the same command again to resume"
        )
    given = [o.flag for o in ctx.registry.setting_options if getattr(args, setting_dest(o), None)]
    if given:
        raise ConfigError(
            f"{given[0]} does not reach the workers with --dask: set it in their own "
            "configuration or environment"
        )
    if args.shard_size < 1:
        raise ConfigError("--shard-size must be at least 1")
    engine = _engine(ctx, args)
    store = _open_store(ctx, url)  # lists the keys on this machine
    try:
        with dask_session(args.dask) as session:
            _announce(session, args.quiet)
            bar = _ClusterProgress(args.quiet)
            try:
                report = migrate_sharded(
                    session.client,
                    args.paths[0],
                    engine,
                    plan,
                    concurrency=args.concurrency,
                    dry_run=args.dry_run,
                    shard_size=args.shard_size,
                    progress=bar,
                    listing=store,
                    config_path=getattr(args, "config", None),
                    profile=getattr(args, "profile", None),
                )
            except MigrationInterrupted as stop:
                bar.close(complete=False)
                return _interrupted(stop, args, args.dry_run, RERUN_HINT)
            bar.close(complete=True)
    finally:
        _close(store)
    return _finish(report, args, dry_run=args.dry_run)


def _announce(session: DaskSession, quiet: bool) -> None:
    """Where the job runs, on how many workers, and the cluster's dashboard."""
    if quiet:
        return
    dashboard = f"; dashboard: {session.dashboard}" if session.dashboard else ""
    print(
        printable(
            f"kmsenvelope: migrating on {session.where} ({session.workers} workers){dashboard}"
        ),
        file=sys.stderr,
    )


class _ClusterProgress:
    """Counts from finished shards: the status line on a terminal, else a line every
    :data:`STATUS_EVERY` seconds (a cluster job may run for hours, its stderr in a log)."""

    STATUS_EVERY = 10.0

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = _MigrationBar() if sys.stderr.isatty() and not quiet else None
        self.last = 0.0

    def __call__(self, p: MigrationProgress) -> None:
        if self.bar is not None:
            self.bar(p)
        elif not self.quiet and p.elapsed - self.last >= self.STATUS_EVERY:
            self.last = p.elapsed
            listed = f"{p.total}+ listed" if p.listing else f"{p.total}"
            print(
                f"kmsenvelope: {p.done + p.failed} of {listed} items done ({p.failed} failed), "
                f"{p.rate:.0f}/s",
                file=sys.stderr,
            )

    def close(self, complete: bool) -> None:
        if self.bar is not None:
            self.bar.close(complete)


def _allow_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow",
        action="append",
        dest="allow",
        metavar="PATTERN",
        help="also allow key URIs matching PATTERN to be contacted to unwrap (see allowed_keys)",
    )


def add_migrate_commands(sub: Subcommands) -> None:
    """Register ``rewrap`` and ``migrate``.

    Options naming keys take one value each and are repeated (``--to A --to B``), so they never
    swallow the paths that follow them.
    """
    p = sub.add_parser(
        "rewrap",
        help="change the recipients of envelope files in place (payload untouched)",
        description="Change the recipients of envelope files in place; the payload is "
        "untouched and each file keeps its encoding (compact stays compact). A FILE that is a "
        "symbolic link is followed: its target is replaced atomically and the link stays a link. "
        "Instead of files, one store URL: sqlite:///DB?table=T&key=ID_COLUMN&column=ENV_COLUMN "
        "(or any scheme a store plugin provides); its NULLs and non-envelopes are left alone.",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="envelope files (a symbolic link: its target is re-written), or one store URL",
    )
    p.add_argument("--add", action="append", metavar="URI", help="recipient to add (repeatable)")
    p.add_argument(
        "--remove",
        action="append",
        metavar="URI",
        help="recipient to drop, as recorded or its versionless URI (repeatable)",
    )
    p.add_argument(
        "--remove-provider",
        action="append",
        metavar="NAME",
        help="drop every recipient of this provider (scheme) (repeatable)",
    )
    p.add_argument(
        "--rotate", action="store_true", help="move each recipient to its key's current version"
    )
    _allow_option(p)
    p.set_defaults(handler=_rewrap)

    m = sub.add_parser(
        "migrate",
        help="re-wrap every envelope under files and directories, resumably",
        description="Re-wrap every envelope under the files and directories named, resumably. "
        "A PATH that is a symbolic link is followed (a file's target is replaced atomically, "
        "the link stays a link); symbolic links met inside a directory are never followed: "
        "they are skipped and listed as skipped. Files that are not envelopes are skipped too. "
        "Instead of paths, one store URL: sqlite:///DB?table=T&key=ID_COLUMN&column=ENV_COLUMN "
        "(or any scheme a store plugin provides; NULLs and non-envelopes are skipped).",
    )
    m.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="files and directories (symbolic links inside directories are skipped), or one "
        "store URL (SCHEME://…)",
    )
    m.add_argument(
        "--to",
        action="append",
        metavar="URI",
        required=True,
        help="recipient every envelope must have (repeatable)",
    )
    group = m.add_mutually_exclusive_group()
    group.add_argument(
        "--remove", action="append", metavar="URI", help="recipient to drop (repeatable)"
    )
    group.add_argument(
        "--remove-provider",
        action="append",
        metavar="NAME",
        help="drop every recipient of this provider (repeatable)",
    )
    m.add_argument("--rotate", action="store_true", help="also move to current key versions")
    _allow_option(m)
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
        help="continue this job where it stopped: what it finished, and has not changed "
        "since, is not touched again (a new job if it has no journal)",
    )
    m.add_argument(
        "--journal",
        metavar="FILE",
        help="job journal (default: one per job, in the user's state directory, e.g. "
        "~/.local/state/kmsenvelope/journals/)",
    )
    m.add_argument(
        "--report", metavar="FILE", help="write a JSON report of every outcome (also on Ctrl-C)"
    )
    m.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the job on the Dask cluster whose scheduler is at ADDRESS (tcp://HOST:PORT), "
        "or on a local cluster of worker processes with 'local' (needs kmsenvelope[dask] and a "
        "store URL). Each worker opens the store and the keys with its own configuration and "
        "credentials; --concurrency is per worker, --rate-limit is shared out among the workers; "
        "no journal: running the command again skips what is done",
    )
    m.add_argument(
        "--shard-size",
        type=int,
        default=SHARD_SIZE,
        metavar="N",
        help=f"with --dask: keys per task (default {SHARD_SIZE})",
    )
    m.set_defaults(handler=_migrate)
