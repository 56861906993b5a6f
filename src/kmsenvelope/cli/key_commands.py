"""``keys …``: manage the local software HSM's keystore.

Prompts (passphrases, the ``destroy`` confirmation) need a terminal; without one, the
passphrases come from the environment and ``keys destroy`` needs ``--yes``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import ConfigError, KeystoreError
from ..kek import scheme_of
from ..local.keystore import KEY_TYPES, Keystore, read_backup
from ..local.provider import PASSPHRASE_ENV, ask_secret
from .context import CliContext, Subcommands

__all__ = ["add_key_commands"]

BACKUP_PASSPHRASE_ENV = "KMSENVELOPE_BACKUP_PASSPHRASE"  # noqa: S105 - a variable name


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def _create(ctx: CliContext, args: argparse.Namespace) -> int:
    if ":" in args.name and not args.name.startswith("local:"):
        return _create_with_provider(ctx, args)
    name = args.name.removeprefix("local:")
    key_type = args.type or "aes256"
    if key_type not in KEY_TYPES:
        raise ConfigError(
            f"--type: invalid choice {key_type!r} for a local key (the local HSM makes "
            f"{' and '.join(KEY_TYPES)} keys)"
        )
    info = ctx.open_keystore(create=True).create_key(name, key_type)
    _say(args, f"created {info.uri} ({info.type}, version {info.current}) in {ctx.keystore_path}")
    print(info.uri)
    return 0


def _create_with_provider(ctx: CliContext, args: argparse.Namespace) -> int:
    """``keys create pkcs11:token=…;object=…``: delegate to the provider's key creator."""
    try:
        scheme = scheme_of(args.name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    creator = ctx.engine.registry.key_creator(scheme)
    uri = creator(args.name, ctx.config.provider_settings(scheme), args.type or "aes256")
    _say(args, f"created {uri}")
    print(uri)
    return 0


def _list(ctx: CliContext, args: argparse.Namespace) -> int:
    keys = ctx.open_keystore().list_keys()
    if args.json:
        json.dump([k.to_json() for k in keys], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not keys:
        _say(args, f"no keys in {ctx.keystore_path}")
        return 0
    print(f"{'URI':<32} {'TYPE':<8} {'STATE':<9} {'CURRENT':>7}  VERSIONS")
    for k in keys:
        versions = ",".join(
            f"{v.version}{'' if v.state == 'active' else '(destroyed)'}" for v in k.versions
        )
        state = "enabled" if k.enabled else "disabled"
        print(f"{k.uri:<32} {k.type:<8} {state:<9} {k.current:>7}  {versions}")
    return 0


def _rotate(ctx: CliContext, args: argparse.Namespace) -> int:
    info = ctx.open_keystore().rotate(args.name)
    _say(args, f"rotated {info.uri}: version {info.current} is now current")
    return 0


def _enable(ctx: CliContext, args: argparse.Namespace) -> int:
    info = ctx.open_keystore().set_enabled(args.name, args.enabled)
    _say(args, f"{info.uri} is now {'enabled' if info.enabled else 'disabled'}")
    return 0


def _destroy(ctx: CliContext, args: argparse.Namespace) -> int:
    store = ctx.open_keystore()
    uri = f"local:{args.name}/{args.version}"
    found = store.destroy_check(args.name, args.version)  # missing or current: error now
    if found.state == "destroyed":
        _say(args, f"{uri} is already destroyed (on {found.destroyed or 'an unknown date'})")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError(
                f"refusing to destroy {uri} without confirmation: there is no terminal to ask "
                "on, so pass --yes"
            )
        if not _confirmed(
            f"Destroy {uri} for good? Envelopes wrapped only by it become undecryptable. "
            "Type the key name to confirm: ",
            args.name,
        ):
            _say(args, f"not confirmed: {uri} was not destroyed")
            return 1
    store.destroy_version(args.name, args.version)
    _say(args, f"destroyed {uri}")
    return 0


def _confirmed(prompt: str, expected: str) -> bool:
    """Ask on the terminal; only the exact answer confirms (end of input does not)."""
    try:
        answer = input(prompt)
    except EOFError:
        print(file=sys.stderr)  # end the prompt's line
        return False
    return answer.strip() == expected


def _backup_passphrase(*, new: bool) -> str:
    """KMSENVELOPE_BACKUP_PASSPHRASE; else a prompt (confirmed when making a backup); else,
    non-interactively, the keystore passphrase -- said out loud on stderr."""
    explicit = os.environ.get(BACKUP_PASSPHRASE_ENV)
    if explicit:
        return explicit
    if sys.stdin.isatty():
        return _prompt_backup_passphrase(new)
    keystore_passphrase = os.environ.get(PASSPHRASE_ENV)
    if not keystore_passphrase:
        raise KeystoreError(f"set {BACKUP_PASSPHRASE_ENV} (or run on a terminal to be asked)")
    print(
        f"kmsenvelope: note: the backup uses the keystore passphrase; set "
        f"{BACKUP_PASSPHRASE_ENV} to protect it with a different one",
        file=sys.stderr,
    )
    return keystore_passphrase


def _prompt_backup_passphrase(new: bool) -> str:
    first = ask_secret("Backup passphrase: ")
    if new and ask_secret("Repeat backup passphrase: ") != first:
        raise KeystoreError("the two passphrases differ")
    if not first:
        raise KeystoreError("empty passphrase")
    return first


def _backup(ctx: CliContext, args: argparse.Namespace) -> int:
    count = ctx.open_keystore().backup(args.file, _backup_passphrase(new=True))
    _say(args, f"backed up {count} key(s) to {args.file}")
    return 0


def _restore(ctx: CliContext, args: argparse.Namespace) -> int:
    passphrase = _backup_passphrase(new=False)
    read_backup(args.file, passphrase)  # check the backup opens before creating a keystore
    store = ctx.open_keystore(create=not Keystore.exists(ctx.keystore_path))
    names = store.restore(args.file, passphrase)
    _say(args, f"restored {len(names)} key(s) into {ctx.keystore_path}: {', '.join(names)}")
    return 0


def add_key_commands(sub: Subcommands) -> None:
    """Register ``keys`` and its subcommands."""
    keys = sub.add_parser(
        "keys",
        help="manage keys in the local software HSM",
        description="Manage keys in the local software HSM. Prompts need a terminal: without "
        "one, passphrases come from KMSENVELOPE_KEYSTORE_PASSPHRASE / "
        "KMSENVELOPE_BACKUP_PASSPHRASE and destructive commands ('keys destroy') need --yes.",
    )
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    p = ksub.add_parser(
        "create",
        help="create a key: NAME in the local HSM (keystore created if needed), or a provider "
        "URI such as 'pkcs11:token=T;object=NAME' for providers that can create keys",
    )
    p.add_argument("name", metavar="NAME|URI")
    p.add_argument(
        "--type",
        metavar="TYPE",
        default=None,
        help=f"key type: for a local key {' or '.join(KEY_TYPES)} (default aes256); a provider "
        "URI accepts the types that provider makes (pkcs11: aes128, aes256, rsa2048, rsa3072, "
        "rsa4096)",
    )
    p.set_defaults(handler=_create)

    p = ksub.add_parser("list", help="list keys and versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_list)

    p = ksub.add_parser("rotate", help="add a new current version")
    p.add_argument("name")
    p.set_defaults(handler=_rotate)

    p = ksub.add_parser("disable", help="refuse all wrap/unwrap with a key")
    p.add_argument("name")
    p.set_defaults(handler=_enable, enabled=False)

    p = ksub.add_parser("enable", help="re-enable a disabled key")
    p.add_argument("name")
    p.set_defaults(handler=_enable, enabled=True)

    p = ksub.add_parser(
        "destroy",
        help="destroy one key version's material for good",
        description="Destroy one key version's material for good: envelopes wrapped only by it "
        "can never be decrypted again. Asks for confirmation on a terminal; without a "
        "terminal (a script, stdin redirected) it refuses unless --yes is given. A version "
        "destroyed already is left as it is.",
    )
    p.add_argument("name")
    p.add_argument("--version", type=int, required=True, metavar="N")
    p.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for confirmation (required when stdin is not a terminal)",
    )
    p.set_defaults(handler=_destroy)

    p = ksub.add_parser("backup", help="write an encrypted backup of every key")
    p.add_argument("file")
    p.set_defaults(handler=_backup)

    p = ksub.add_parser("restore", help="restore keys from a backup file")
    p.add_argument("file")
    p.set_defaults(handler=_restore)
