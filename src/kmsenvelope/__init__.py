"""kmsenvelope: envelope encryption across key-management services.

Each message gets its own data key, wrapped by one or more key-encryption keys (KEKs) named by
URI (``local:NAME``, ``aws-kms:…``, ``azure-kv:…``, ``pkcs11:…`` or any plugin's scheme).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import BinaryIO

from .config import Config, load_config
from .engine import Engine, EnvelopeInfo, Recipient
from .errors import (
    AccessDeniedError,
    AuditLogError,
    AuthenticationError,
    ConfigError,
    DecryptionError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    KeystoreCorruptError,
    KeystoreError,
    KmsEnvelopeError,
    MalformedEnvelopeError,
    NoRecipientError,
    PluginError,
    ProviderError,
    ProviderUnavailableError,
    RecipientAttempt,
    ThrottledError,
    UnknownSchemeError,
    UnwrapError,
    WrongPassphraseError,
)
from .kek import KeyEncryptionKey, ProviderFactory, RotatableKey, WrappedKey
from .plugins import ProviderRegistry, hookimpl

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "AuditLogError",
    "AuthenticationError",
    "Config",
    "ConfigError",
    "DecryptionError",
    "Engine",
    "EnvelopeInfo",
    "KeyDestroyedError",
    "KeyDisabledError",
    "KeyEncryptionKey",
    "KeyNotFoundError",
    "KeystoreCorruptError",
    "KeystoreError",
    "KmsEnvelopeError",
    "MalformedEnvelopeError",
    "NoRecipientError",
    "PluginError",
    "ProviderError",
    "ProviderFactory",
    "ProviderRegistry",
    "ProviderUnavailableError",
    "RecipientAttempt",
    "RotatableKey",
    "ThrottledError",
    "UnknownSchemeError",
    "UnwrapError",
    "WrappedKey",
    "WrongPassphraseError",
    "decrypt",
    "decrypt_stream",
    "default_engine",
    "encrypt",
    "encrypt_stream",
    "hookimpl",
    "inspect",
    "load_config",
    "rewrap",
    "rewrap_stream",
]

_default: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The process-wide engine used by the module-level functions (config and plugins loaded
    from the environment on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine()
        return _default


def encrypt(
    data: bytes | bytearray | memoryview,
    to: Iterable[Recipient] | None = None,
    context: Mapping[str, str] | None = None,
    *,
    armor: bool = False,
    chunk_size: int | None = None,
) -> bytes:
    """Encrypt ``data`` for the KEKs in ``to`` (URIs or KEK objects; default: config)."""
    return default_engine().encrypt(data, to, context, armor=armor, chunk_size=chunk_size)


def decrypt(
    blob: bytes | bytearray | memoryview | str,
    context: Mapping[str, str] | None = None,
    *,
    keys: Sequence[KeyEncryptionKey] = (),
) -> bytes:
    """Decrypt an envelope (binary or compact); ``context`` must match the envelope's."""
    return default_engine().decrypt(blob, context, keys=keys)


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    to: Iterable[Recipient] | None = None,
    context: Mapping[str, str] | None = None,
    *,
    armor: bool = False,
    chunk_size: int | None = None,
) -> int:
    """Encrypt binary file ``src`` into ``dst`` in constant memory; return bytes read."""
    return default_engine().encrypt_stream(
        src, dst, to, context, armor=armor, chunk_size=chunk_size
    )


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    context: Mapping[str, str] | None = None,
    *,
    keys: Sequence[KeyEncryptionKey] = (),
) -> int:
    """Decrypt binary file ``src`` into ``dst`` chunk by chunk; return bytes written."""
    return default_engine().decrypt_stream(src, dst, context, keys=keys)


def inspect(blob_or_file: bytes | bytearray | memoryview | str | BinaryIO) -> EnvelopeInfo:
    """Read an envelope's header (format, recipients, context) without any key."""
    return default_engine().inspect(blob_or_file)


def rewrap(
    envelope: bytes | bytearray | memoryview | str,
    add: Iterable[Recipient] = (),
    remove: Iterable[Recipient] = (),
    *,
    remove_providers: Iterable[str] = (),
    rotate: bool = False,
    keys: Sequence[KeyEncryptionKey] = (),
) -> bytes:
    """Change an envelope's recipients without touching its payload; same encoding out.

    The data key is unwrapped through any recipient that works (``keys`` are tried first),
    wrapped for ``add``; recipients named in ``remove`` (URI, versionless URI or KEK) or whose
    provider is in ``remove_providers`` are dropped; ``rotate`` moves each recipient to its
    key's current version. Removing the last recipient is refused. New recipients are verified
    before the result is returned.
    """
    from .rewrapping import RewrapPlan, rewrap_bytes

    plan = RewrapPlan.of(add, remove, remove_providers, rotate)
    data = envelope if isinstance(envelope, str) else bytes(envelope)
    return rewrap_bytes(default_engine(), data, plan, keys)[0]


def rewrap_stream(
    src: BinaryIO,
    dst: BinaryIO,
    add: Iterable[Recipient] = (),
    remove: Iterable[Recipient] = (),
    *,
    remove_providers: Iterable[str] = (),
    rotate: bool = False,
    keys: Sequence[KeyEncryptionKey] = (),
) -> bool:
    """Streaming :func:`rewrap` for files: copies the payload in constant memory.

    Returns whether anything changed (``dst`` receives the envelope either way).
    """
    from .rewrapping import RewrapPlan
    from .rewrapping import rewrap_stream as _rewrap_stream

    plan = RewrapPlan.of(add, remove, remove_providers, rotate)
    return _rewrap_stream(default_engine(), src, dst, plan, keys).changed
