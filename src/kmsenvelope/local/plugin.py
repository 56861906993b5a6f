"""Registers the ``local`` provider through the ``kmsenvelope`` entry-point group."""

from __future__ import annotations

from ..plugins import RegisterProvider, hookimpl
from .provider import factory


@hookimpl
def kmsenvelope_register_providers(register: RegisterProvider) -> None:
    """Provide the ``local`` scheme."""
    register("local", factory)
