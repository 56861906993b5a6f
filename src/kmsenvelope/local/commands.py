"""The local HSM's commands, ``keys …`` and ``audit …``, registered through the commands hook.

Prompts (passphrases, the ``destroy`` confirmation) need a terminal; without one, the
passphrases come from the environment and ``keys destroy`` needs ``--yes``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import ConfigError, KeystoreError
from ..hooks import CommandContext, RegisterCommand
from ..kek import scheme_of
from .backup import read_backup
from .keystore import KEY_TYPES, Keystore
from .provider import (
    LOCAL_SETTINGS,
    ask_passphrase,
    daemon_socket,
    keystore_dir,
    open_keystore,
    passphrase_from_env,
)
from .remote import RemoteKeystore, client_for
from .unlock import PASSPHRASE_ENV

__all__ = ["BACKUP_PASSPHRASE_ENV", "register_commands"]

BACKUP_PASSPHRASE_ENV = "KMSENVELOPE_BACKUP_PASSPHRASE"  # noqa: S105 - a variable name


def _keystore_path(ctx: CommandContext) -> Path:
    """The keystore directory of this run (``--keystore``, config, environment or default)."""
    return keystore_dir(ctx.config.provider_settings("local"))


def _open_keystore(ctx: CommandContext, *, create: bool = False) -> Keystore:
    """Unlock the keystore; with ``create``, make it first if it does not exist."""
    path = _keystore_path(ctx)
    if create and not Keystore.exists(path):
        passphrase = passphrase_from_env(prompt="New keystore passphrase: ", confirm=True)
        return Keystore.create(path, passphrase)
    return open_keystore(ctx.config.provider_settings("local"))


def _admin(ctx: CommandContext, *, create: bool = False) -> Keystore | RemoteKeystore:
    """Where key administration happens: through the HSM daemon when a socket is configured
    (``[providers.local] socket`` / ``KMSENVELOPE_HSM_SOCKET``), else the keystore itself."""
    settings = ctx.config.provider_settings("local")
    socket_path = daemon_socket(settings)
    if socket_path is not None:
        return RemoteKeystore(client_for(socket_path, LOCAL_SETTINGS.parse(settings)["daemon_uid"]))
    return _open_keystore(ctx, create=create)


def _where(ctx: CommandContext) -> str:
    socket_path = daemon_socket(ctx.config.provider_settings("local"))
    if socket_path is not None:
        return f"the HSM daemon at {socket_path}"
    return str(_keystore_path(ctx))


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def _create(ctx: CommandContext, args: argparse.Namespace) -> int:
    if ":" in args.name and not args.name.startswith("local:"):
        return _create_with_provider(ctx, args)
    name = args.name.removeprefix("local:")
    key_type = args.type or "aes256"
    if key_type not in KEY_TYPES:
        raise ConfigError(
            f"--type: invalid choice {key_type!r} for a local key (the local HSM makes "
            f"{' and '.join(KEY_TYPES)} keys)"
        )
    info = _admin(ctx, create=True).create_key(name, key_type)
    _say(args, f"created {info.uri} ({info.type}, version {info.current}) in {_where(ctx)}")
    print(info.uri)
    return 0


def _create_with_provider(ctx: CommandContext, args: argparse.Namespace) -> int:
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


def _list(ctx: CommandContext, args: argparse.Namespace) -> int:
    keys = _admin(ctx).list_keys()
    if args.json:
        json.dump([k.to_json() for k in keys], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not keys:
        _say(args, f"no keys in {_where(ctx)}")
        return 0
    print(f"{'URI':<32} {'TYPE':<8} {'STATE':<9} {'CURRENT':>7}  VERSIONS")
    for k in keys:
        versions = ",".join(
            f"{v.version}{'' if v.state == 'active' else '(destroyed)'}" for v in k.versions
        )
        state = "enabled" if k.enabled else "disabled"
        print(f"{k.uri:<32} {k.type:<8} {state:<9} {k.current:>7}  {versions}")
    return 0


def _rotate(ctx: CommandContext, args: argparse.Namespace) -> int:
    info = _admin(ctx).rotate(args.name)
    _say(args, f"rotated {info.uri}: version {info.current} is now current")
    return 0


def _set_enabled(ctx: CommandContext, args: argparse.Namespace, enabled: bool) -> int:
    info = _admin(ctx).set_enabled(args.name, enabled)
    _say(args, f"{info.uri} is now {'enabled' if info.enabled else 'disabled'}")
    return 0


def _enable(ctx: CommandContext, args: argparse.Namespace) -> int:
    return _set_enabled(ctx, args, True)


def _disable(ctx: CommandContext, args: argparse.Namespace) -> int:
    return _set_enabled(ctx, args, False)


def _destroy(ctx: CommandContext, args: argparse.Namespace) -> int:
    store = _admin(ctx)
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


def _backup_passphrase(*, new: bool, remote: bool = False) -> str:
    """KMSENVELOPE_BACKUP_PASSPHRASE; else a prompt (confirmed when making a backup); else,
    non-interactively, the keystore passphrase -- said out loud on stderr (never through the
    HSM daemon, whose clients do not know the keystore passphrase)."""
    explicit = os.environ.get(BACKUP_PASSPHRASE_ENV)
    if explicit:
        return explicit
    if sys.stdin.isatty():
        repeat = "Repeat backup passphrase: " if new else None
        return ask_passphrase("Backup passphrase: ", repeat=repeat)
    if remote:
        raise KeystoreError(
            f"a backup through the HSM daemon needs its own passphrase: set "
            f"{BACKUP_PASSPHRASE_ENV} (or run on a terminal to be asked)"
        )
    keystore_passphrase = os.environ.get(PASSPHRASE_ENV)
    if not keystore_passphrase:
        raise KeystoreError(f"set {BACKUP_PASSPHRASE_ENV} (or run on a terminal to be asked)")
    print(
        f"kmsenvelope: note: the backup uses the keystore passphrase; set "
        f"{BACKUP_PASSPHRASE_ENV} to protect it with a different one",
        file=sys.stderr,
    )
    return keystore_passphrase


def _backup(ctx: CommandContext, args: argparse.Namespace) -> int:
    store = _admin(ctx)
    count = store.backup(
        args.file, _backup_passphrase(new=True, remote=isinstance(store, RemoteKeystore))
    )
    _say(args, f"backed up {count} key(s) to {args.file}")
    return 0


def _restore(ctx: CommandContext, args: argparse.Namespace) -> int:
    passphrase = _backup_passphrase(new=False)
    read_backup(args.file, passphrase)  # check the backup opens before creating a keystore
    path = _keystore_path(ctx)
    store = _open_keystore(ctx, create=not Keystore.exists(path))
    names = store.restore(args.file, passphrase)
    _say(args, f"restored {len(names)} key(s) into {path}: {', '.join(names)}")
    return 0


def _audit_verify(ctx: CommandContext, args: argparse.Namespace) -> int:
    report = _open_keystore(ctx).verify_audit(args.anchor)
    anchored = ", not rolled back past the anchor" if args.anchor is not None else ""
    print(f"audit log OK: {report.entries} entries, chain intact{anchored}")
    return 0


def _audit_anchor(ctx: CommandContext, args: argparse.Namespace) -> int:
    """Print the verified audit head, to be kept outside the keystore (see ``verify --anchor``)."""
    report = _open_keystore(ctx).verify_audit()
    print(report.anchor)
    if not args.quiet:
        print(
            "kmsenvelope: keep this anchor outside the keystore; 'kmsenvelope audit verify "
            "--anchor VALUE' proves the log was not rolled back past it",
            file=sys.stderr,
        )
    return 0


def _name_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")


def _file_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")


def _create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME|URI")
    p.add_argument(
        "--type",
        metavar="TYPE",
        default=None,
        help=f"key type: for a local key {' or '.join(KEY_TYPES)} (default aes256); a provider "
        "URI accepts the types that provider makes (pkcs11: aes128, aes256, rsa2048, rsa3072, "
        "rsa4096)",
    )


def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _destroy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--version", type=int, required=True, metavar="N")
    p.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for confirmation (required when stdin is not a terminal)",
    )


def _anchor_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--anchor",
        metavar="VALUE",
        default=None,
        help="an anchor printed earlier by 'audit anchor': fail unless its entry is still in "
        "the chain (the log was not rolled back past it)",
    )


def register_commands(register: RegisterCommand) -> None:
    """Register ``keys`` and ``audit`` and their subcommands (``kmsenvelope_register_commands``)."""
    register(
        "keys",
        None,
        help="manage keys in the local software HSM",
        description="Manage keys in the local software HSM. Prompts need a terminal: without "
        "one, passphrases come from KMSENVELOPE_KEYSTORE_PASSPHRASE / "
        "KMSENVELOPE_BACKUP_PASSPHRASE and destructive commands ('keys destroy') need --yes.",
    )
    register(
        "keys create",
        _create,
        help="create a key: NAME in the local HSM (keystore created if needed), or a provider "
        "URI such as 'pkcs11:token=T;object=NAME' for providers that can create keys",
        arguments=_create_arguments,
    )
    register("keys list", _list, help="list keys and versions", arguments=_list_arguments)
    register("keys rotate", _rotate, help="add a new current version", arguments=_name_argument)
    register(
        "keys disable",
        _disable,
        help="refuse all wrap/unwrap with a key",
        arguments=_name_argument,
    )
    register("keys enable", _enable, help="re-enable a disabled key", arguments=_name_argument)
    register(
        "keys destroy",
        _destroy,
        help="destroy one key version's material for good",
        description="Destroy one key version's material for good: envelopes wrapped only by it "
        "can never be decrypted again. Asks for confirmation on a terminal; without a "
        "terminal (a script, stdin redirected) it refuses unless --yes is given. A version "
        "destroyed already is left as it is.",
        arguments=_destroy_arguments,
    )
    register(
        "keys backup",
        _backup,
        help="write an encrypted backup of every key",
        arguments=_file_argument,
    )
    register(
        "keys restore",
        _restore,
        help="restore keys from a backup file",
        arguments=_file_argument,
    )

    register("audit", None, help="audit log commands")
    register(
        "audit verify",
        _audit_verify,
        help="check the local keystore's audit hash chain (exit 12 if broken or rolled back)",
        arguments=_anchor_argument,
    )
    register(
        "audit anchor",
        _audit_anchor,
        help="print the current audit head (SEQ:HASH) to keep outside the keystore, for "
        "'audit verify --anchor'",
    )
