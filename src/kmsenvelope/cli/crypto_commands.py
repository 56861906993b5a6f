"""``encrypt``, ``decrypt`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .context import CliContext, Subcommands, parse_pairs
from .output import open_input, open_output
from .progress import maybe_progress

__all__ = ["add_crypto_commands"]


def _input_size(name: str) -> int | None:
    try:
        return os.stat(name).st_size if name != "-" else None
    except OSError:
        return None


def _chunk_size(text: str) -> int:
    from ..header import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not MIN_CHUNK_SIZE <= value <= MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(f"must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    return value


def _encrypt(ctx: CliContext, args: argparse.Namespace) -> int:
    context = parse_pairs(args.context, "--context")
    engine = ctx.engine
    with (
        open_input(args.input) as src,
        open_output(args.output, binary_to_tty_ok=args.armor) as dst,
    ):
        bar = maybe_progress(_input_size(args.input), "encrypting", args.quiet)
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
            bar.close()
    return 0


def _decrypt(ctx: CliContext, args: argparse.Namespace) -> int:
    context = parse_pairs(args.context, "--context")
    engine = ctx.engine
    with open_input(args.input) as src, open_output(args.output, binary_to_tty_ok=True) as dst:
        bar = maybe_progress(_input_size(args.input), "decrypting", args.quiet)
        engine.decrypt_stream(src, dst, context or None, progress=bar)
        if bar:
            bar.close()
    return 0


def _inspect(ctx: CliContext, args: argparse.Namespace) -> int:
    from ..engine import inspect_envelope

    with open_input(args.file) as src:
        info = inspect_envelope(src)
    json.dump(info.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def add_crypto_commands(sub: Subcommands) -> None:
    """Register the three data commands."""
    enc = sub.add_parser("encrypt", help="encrypt a file or stdin into an envelope")
    enc.add_argument("-i", "--input", default="-", help="input file (default: stdin)")
    enc.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    enc.add_argument(
        "--to",
        action="append",
        metavar="URI",
        help="recipient key URI (repeatable; default: config 'recipients')",
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
        "each chunk is authenticated before it is written, but a truncated or tampered tail is "
        "only detected at the end: the exit code is then non-zero and what was already written "
        "must be discarded.",
    )
    dec.add_argument("-i", "--input", default="-", help="input file (default: stdin)")
    dec.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    dec.add_argument(
        "--context",
        action="append",
        metavar="K=V",
        help="required encryption context entry (repeatable)",
    )
    dec.set_defaults(handler=_decrypt)

    ins = sub.add_parser("inspect", help="show an envelope's header as JSON (no key needed)")
    ins.add_argument("file", help="envelope file, or - for stdin")
    ins.set_defaults(handler=_inspect)
