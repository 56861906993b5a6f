"""``encrypt``, ``decrypt`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import ConfigError
from .context import CliContext, Subcommands, parse_pairs
from .output import open_input, open_output
from .progress import maybe_progress

__all__ = ["add_crypto_commands"]


def _input_name(args: argparse.Namespace) -> str:
    """The input: ``-i IN`` or the positional ``IN`` (not both); stdin by default."""
    if args.input is not None and args.file is not None:
        raise ConfigError(f"two inputs given ({args.input} and {args.file}): use -i IN or IN")
    name = args.input if args.input is not None else args.file
    return "-" if name is None else str(name)


def _input_size(name: str) -> int | None:
    try:
        return os.stat(name).st_size if name != "-" else None
    except OSError:
        return None


def _chunk_size(text: str) -> int:
    from ..format.header import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not MIN_CHUNK_SIZE <= value <= MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(f"must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    return value


def _encrypt(ctx: CliContext, args: argparse.Namespace) -> int:
    context = parse_pairs(args.context, "--context")
    name = _input_name(args)
    engine = ctx.engine
    with (
        open_input(name) as src,
        open_output(args.output, binary_to_tty_ok=args.armor) as dst,
    ):
        bar = maybe_progress(_input_size(name), "encrypting", args.quiet)
        engine.encrypt_stream(
            src,
            dst,
            args.to or None,
            context or None,
            armor=args.armor,
            chunk_size=args.chunk_size,
            progress=bar,
        )
        if bar:
            bar.close(complete=True)
    return 0


def _decrypt(ctx: CliContext, args: argparse.Namespace) -> int:
    context = parse_pairs(args.context, "--context")
    name = _input_name(args)
    engine = ctx.engine
    with open_input(name) as src, open_output(args.output, binary_to_tty_ok=True) as dst:
        # The bar counts plaintext against the envelope's size: the last update shows the total.
        bar = maybe_progress(_input_size(name), "decrypting", args.quiet)
        engine.decrypt_stream(src, dst, context or None, progress=bar)
        if bar:
            bar.close(complete=True)
    return 0


def _inspect(ctx: CliContext, args: argparse.Namespace) -> int:
    from ..engine import inspect_envelope

    with open_input(args.file) as src:
        info = inspect_envelope(src)
    json.dump(info.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


_OUTPUT_HELP = (
    "-o never replaces what is not a regular file: a symlink stays a symlink (the file it "
    "points to is replaced atomically); a device or FIFO is written through, like stdout. "
    "Interrupted (Ctrl-C, SIGTERM, SIGHUP) or killed, it leaves no partial file."
)


def _add_io(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", metavar="IN", help="input file (same as -i IN)")
    parser.add_argument("-i", "--input", metavar="IN", help="input file (default: stdin)")
    parser.add_argument(
        "-o", "--output", metavar="OUT", default="-", help="output file (default: stdout)"
    )


def add_crypto_commands(sub: Subcommands) -> None:
    """Register the three data commands."""
    enc = sub.add_parser(
        "encrypt",
        help="encrypt a file or stdin into an envelope",
        description="Encrypt a file (or stdin) into an envelope. Options take one value each; "
        "repeat them for more (--to A --to B), so a path after them is the input.",
        epilog=_OUTPUT_HELP,
    )
    _add_io(enc)
    enc.add_argument(
        "--to",
        action="append",
        metavar="URI",
        help="recipient key URI (repeat for more; default: config 'recipients')",
    )
    enc.add_argument(
        "--context", action="append", metavar="K=V", help="encryption context entry (repeatable)"
    )
    enc.add_argument(
        "--armor",
        action="store_true",
        help="write the compact ASCII form (kmsenv1.…) instead of binary",
    )
    enc.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=None,
        metavar="BYTES",
        help="payload chunk size (default 1 MiB)",
    )
    enc.set_defaults(handler=_encrypt)

    dec = sub.add_parser(
        "decrypt",
        help="decrypt an envelope (binary or compact)",
        description="Decrypt an envelope. With -o FILE the plaintext is written to a temporary "
        "file renamed into place only if the whole envelope authenticates. Written to stdout, "
        "or with -o to a device or FIFO (e.g. /dev/null, a named pipe), each chunk is "
        "authenticated before it is written, but it is released at once, before the end of the "
        "envelope is authenticated: a truncated or tampered tail is only detected at the end, "
        "the exit code is then non-zero and what was already written must be discarded.",
        epilog=_OUTPUT_HELP,
    )
    _add_io(dec)
    dec.add_argument(
        "--context",
        action="append",
        metavar="K=V",
        help="required encryption context entry (repeatable)",
    )
    dec.add_argument(
        "--allow",
        action="append",
        dest="allow",
        metavar="PATTERN",
        help="also allow key URIs matching PATTERN to be contacted (see allowed_keys)",
    )
    dec.set_defaults(handler=_decrypt)

    ins = sub.add_parser("inspect", help="show an envelope's header as JSON (no key needed)")
    ins.add_argument("file", help="envelope file, or - for stdin")
    ins.set_defaults(handler=_inspect)
