"""kmsenvelope-azure: the Azure Key Vault and Managed HSM provider (scheme ``azure-kv``).

Key URIs: ``azure-kv:https://VAULT.vault.azure.net/keys/NAME[/VERSION]`` and
``azure-kv:https://HSM.managedhsm.azure.net/keys/NAME[/VERSION]``. The plugin module
(:mod:`kmsenvelope_azure.plugin`) is what the ``kmsenvelope`` entry point loads; the factory
class is :class:`kmsenvelope_azure.provider.AzureKeyVaultProvider`.
"""

from __future__ import annotations

from .uri import SCHEME

__version__ = "0.1.0"

__all__ = ["SCHEME", "__version__"]
