"""kmsenvelope-vault: the HashiCorp Vault / OpenBao Transit provider (scheme ``vault-transit``).

Key URIs: ``vault-transit:https://HOST:PORT/MOUNT/keys/NAME[/VERSION]``. The plugin module
(:mod:`kmsenvelope_vault.plugin`) is what the ``kmsenvelope`` entry point loads; the factory class
is :class:`kmsenvelope_vault.provider.VaultTransitProvider`.
"""

from __future__ import annotations

from .uri import SCHEME

__version__ = "0.1.0"

__all__ = ["SCHEME", "__version__"]
