"""Registers the ``local`` provider, its ``--keystore`` option and its ``keys``/``audit``/``hsm``
commands through the ``kmsenvelope`` entry-point group, as any plugin does."""

from __future__ import annotations

from ..hooks import RegisterCommand, RegisterProvider, RegisterSettingOption, hookimpl
from .commands import register_commands
from .daemon_commands import register_daemon_commands
from .provider import LOCAL_SETTINGS, factory


@hookimpl
def kmsenvelope_register_providers(register: RegisterProvider) -> None:
    """Provide the ``local`` scheme, with its settings schema."""
    register("local", factory, schema=LOCAL_SETTINGS)


@hookimpl
def kmsenvelope_register_setting_options(register: RegisterSettingOption) -> None:
    """``--keystore DIR`` sets ``[providers.local] keystore`` for one run."""
    register("--keystore", "local", "keystore", metavar="DIR", help="local keystore directory")


@hookimpl
def kmsenvelope_register_commands(register: RegisterCommand) -> None:
    """The ``keys …`` and ``audit …`` commands (:mod:`kmsenvelope.local.commands`) and
    ``hsm serve`` (:mod:`kmsenvelope.local.daemon_commands`)."""
    register_commands(register)
    register_daemon_commands(register)
