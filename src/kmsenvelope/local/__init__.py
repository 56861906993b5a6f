"""The built-in local software HSM (scheme ``local``): a passphrase-protected keystore."""

from .keystore import KeyInfo, Keystore, KeyType, VersionInfo
from .provider import LocalKEK, open_keystore, passphrase_from_env

__all__ = [
    "KeyInfo",
    "KeyType",
    "Keystore",
    "LocalKEK",
    "VersionInfo",
    "open_keystore",
    "passphrase_from_env",
]
