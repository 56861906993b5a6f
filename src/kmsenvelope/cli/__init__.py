"""The ``kmsenvelope`` command line: argument parsing, dispatch and error reporting.

Exit codes: 0 success; 1 other library error; 2 bad arguments or configuration; 3 envelope did
not authenticate / is malformed; 4 no recipient could unwrap; 5 unknown provider scheme or
plugin failure; 6 provider error; 7 provider unavailable or throttled; 8 access denied;
9 key not found; 10 key disabled or destroyed; 11 keystore error (passphrase, corruption);
12 audit log broken or an audit sink failed; 13 migration incomplete (some envelopes failed or
changed during the job); 70 internal error (a bug: please report it); 130 interrupted (Ctrl-C;
129 for SIGHUP, 143 for SIGTERM: 128 + the signal number, after the same clean-up).

Every line printed here goes through ``safe_text.printable``: key ids, contexts and reasons from
an envelope or a key store cannot put control characters on the user's terminal or log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import KmsEnvelopeError
from ..plugins import ProviderRegistry, SettingOption
from .admin_commands import add_admin_commands
from .context import CliContext
from .crypto_commands import add_crypto_commands
from .migrate_commands import add_migrate_commands
from .plugin_commands import add_plugin_commands, add_setting_options
from .progress import end_status_line
from .safe_text import SafeFormatter, printable
from .signals import disable_core_dumps, exit_code_for, termination_signals

__all__ = ["build_parser", "main"]

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
DEBUG_ENV = "KMSENVELOPE_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors in our format (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        end_status_line()
        self.exit(2, printable(f"kmsenvelope: error: {message} (see '{self.prog} --help')") + "\n")


def build_parser(registry: ProviderRegistry | None = None) -> argparse.ArgumentParser:
    """The full argument parser: the built-in commands, then those the plugins in ``registry``
    registered (default: the installed plugins); ``PluginError`` if a plugin's collide."""
    if registry is None:
        registry = ProviderRegistry.load(skip_broken=True)
    options = registry.setting_options
    parser = _Parser(
        prog="kmsenvelope",
        description="Envelope encryption across key-management services.",
        epilog="Exit codes are listed in 'python -m pydoc kmsenvelope.cli' and the README.",
    )
    parser.add_argument("--version", action="version", version=f"kmsenvelope {__version__}")
    _add_global_options(parser, None, options)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    add_crypto_commands(sub)
    add_migrate_commands(sub)
    add_admin_commands(sub)
    _accept_global_options_everywhere(parser, options)
    add_plugin_commands(
        sub, registry.commands, lambda p: _add_global_options(p, argparse.SUPPRESS, options)
    )
    return parser


def _add_global_options(
    parser: argparse.ArgumentParser, default: object, options: Sequence[SettingOption]
) -> None:
    """--config, --profile, the plugins' setting options (--keystore), -q, -v. On subcommands
    their default is SUPPRESS, so ``kmsenvelope keys create NAME --keystore DIR`` works as well
    as putting them first."""
    parser.add_argument(
        "--config", metavar="FILE", default=default, help="config file (default: search path)"
    )
    parser.add_argument("--profile", metavar="NAME", default=default, help="config profile to use")
    add_setting_options(parser, options, default)
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if default is None else default,
        help="no progress or status",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if default is None else default,
        help="log to stderr (-vv: debug)",
    )


def _accept_global_options_everywhere(
    parser: argparse.ArgumentParser, options: Sequence[SettingOption]
) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_global_options(child, argparse.SUPPRESS, options)
                _accept_global_options_everywhere(child, options)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    disable_core_dumps()  # before any passphrase or key is read
    with termination_signals():
        try:
            return _run(argv)
        except KeyboardInterrupt as exc:  # also SIGTERM and SIGHUP (signals.Terminated)
            _say("kmsenvelope: interrupted")
            return exit_code_for(exc)


def _say(line: str) -> None:
    """Print one line on stderr, escaped, after finishing any progress line."""
    end_status_line()
    print(printable(line), file=sys.stderr)


def _run(argv: Sequence[str] | None) -> int:
    registry = ProviderRegistry.load(skip_broken=True)  # a broken plugin fails what needs it
    try:
        parser = build_parser(registry)
    except KmsEnvelopeError as exc:  # a plugin's command or option collides
        _say(f"kmsenvelope: error: {exc}")
        return exc.exit_code
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, registry)
    ctx = CliContext(args, registry)
    try:
        return int(args.handler(ctx, args))
    except KmsEnvelopeError as exc:
        _say(f"kmsenvelope: error: {exc}")
        return exc.exit_code
    except BrokenPipeError:
        return 0 if _quiet_pipe() else 1
    except OSError as exc:
        _say(f"kmsenvelope: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return 1
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        _say(
            f"kmsenvelope: internal error: {type(exc).__name__}: {exc} "
            f"(set {DEBUG_ENV}=1 for a traceback, and please report it)"
        )
        return EXIT_INTERNAL


def _configure_logging(verbose: int, registry: ProviderRegistry) -> None:
    """Quiet by default: provider SDKs must not print their own lines before our error line.

    ``-v``/``-vv`` (or KMSENVELOPE_DEBUG) turn on kmsenvelope's own loggers and those plugins
    declare their own. The SDK loggers plugins declare silenced (they log request and response
    bodies at DEBUG: for KMS Encrypt/Decrypt those hold data keys) never go below WARNING.
    """
    root = logging.getLogger()
    if verbose or os.environ.get(DEBUG_ENV):
        level = logging.DEBUG if verbose > 1 or os.environ.get(DEBUG_ENV) else logging.INFO
        handler = logging.StreamHandler()
        handler.setFormatter(SafeFormatter("kmsenvelope: %(name)s: %(message)s"))
        handler.addFilter(_end_status_line_first)
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
        for name in ("kmsenvelope", *registry.own_loggers):
            logging.getLogger(name).setLevel(level)
    elif not root.handlers:
        root.addHandler(logging.NullHandler())  # no "last resort" printing of SDK warnings
    if not (verbose or os.environ.get(DEBUG_ENV)):
        # a best-effort audit sink that fails must be seen, even without -v
        audit = logging.getLogger("kmsenvelope.audit")
        if not audit.handlers:
            handler = logging.StreamHandler()
            handler.setLevel(logging.WARNING)
            handler.setFormatter(SafeFormatter("kmsenvelope: warning: %(message)s"))
            handler.addFilter(_end_status_line_first)
            audit.addHandler(handler)
    for name in registry.silenced_loggers:  # last: a plugin's "own" logger cannot unsilence one
        logging.getLogger(name).setLevel(logging.WARNING)


def _end_status_line_first(record: logging.LogRecord) -> bool:
    """A log line never lands on the progress bar's line."""
    end_status_line()
    return True


def _quiet_pipe() -> bool:
    """Stdout was closed early (``| head``): silence the flush error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return True
