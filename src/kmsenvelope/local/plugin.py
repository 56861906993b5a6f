"""Registers the ``local`` provider through the ``kmsenvelope`` entry-point group."""

from __future__ import annotations

from ..plugins import RegisterProvider, hookimpl
from .provider import LOCAL_SETTINGS, factory


@hookimpl
def kmsenvelope_register_providers(register: RegisterProvider) -> None:
    """Provide the ``local`` scheme, with its settings schema."""
    register("local", factory, schema=LOCAL_SETTINGS)
