"""kmsenvelope: envelope encryption across key-management services.

Each message gets its own data key, wrapped by one or more key-encryption keys (KEKs) named by
URI (``local:NAME``, ``aws-kms:…``, ``azure-kv:…``, ``pkcs11:…`` or any plugin's scheme).

The public API has three layers, as pyca/cryptography separates its recipes from ``hazmat``:

- **Recipes** (this module): :func:`encrypt`, :func:`decrypt`, :func:`encrypt_stream`,
  :func:`decrypt_stream`, :func:`inspect_envelope`, :func:`rewrap`, :func:`rewrap_stream`,
  :func:`migrate`, :class:`Engine`, :class:`Config` and :func:`load_config`.
- **Plugins** (for provider authors): :class:`KeyEncryptionKey`, :class:`WrappedKey`,
  :class:`RotatableKey`, :class:`ProviderRegistry`, :data:`hookimpl`, :class:`InMemoryKEK`, the
  settings schema (:class:`Setting`, :class:`SettingsSchema`) and the conformance suite
  ``kmsenvelope.conformance.ProviderConformance`` (it needs pytest, so it is not imported here).
- **Errors**: one tree, drawn in the docstring of :mod:`kmsenvelope.errors`; the errors callers
  usually catch are re-exported here, every one is in ``kmsenvelope.errors``.

Everything else — the format's header, chunk and compact codecs, the key schedule — is
:mod:`kmsenvelope.hazmat`. Names this module used to export (``inspect``, which shadowed the
standard library module, and the less common exceptions) still work for one release, with a
``DeprecationWarning``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, BinaryIO

from . import errors
from .config import Config, load_config
from .engine import Engine, Recipient
from .errors import (
    AuthenticationError,
    ConfigError,
    DecryptionError,
    KmsEnvelopeError,
    MalformedEnvelopeError,
    MigrationIncompleteError,
    NoRecipientError,
    ProviderError,
    ProviderUnavailableError,
)
from .inspection import EnvelopeInfo, inspect_envelope
from .kek import KeyEncryptionKey, ProviderFactory, RotatableKey, WrappedKey
from .memory import InMemoryKEK
from .migrate.runner import migrate
from .plugins import ProviderRegistry, hookimpl
from .settings import Setting, SettingsSchema

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Config",
    "ConfigError",
    "DecryptionError",
    "Engine",
    "EnvelopeInfo",
    "InMemoryKEK",
    "KeyEncryptionKey",
    "KmsEnvelopeError",
    "MalformedEnvelopeError",
    "MigrationIncompleteError",
    "NoRecipientError",
    "ProviderError",
    "ProviderFactory",
    "ProviderRegistry",
    "ProviderUnavailableError",
    "Recipient",
    "RotatableKey",
    "Setting",
    "SettingsSchema",
    "WrappedKey",
    "decrypt",
    "decrypt_stream",
    "default_engine",
    "encrypt",
    "encrypt_stream",
    "errors",
    "hookimpl",
    "inspect_envelope",
    "load_config",
    "migrate",
    "rewrap",
    "rewrap_stream",
]

# Exported before the public API was drawn; importable for one more release.
_DEPRECATED_ERRORS = frozenset(
    {
        "AccessDeniedError",
        "AuditLogError",
        "KeyDestroyedError",
        "KeyDisabledError",
        "KeyNotFoundError",
        "KeystoreCorruptError",
        "KeystoreError",
        "PluginError",
        "RecipientAttempt",
        "ThrottledError",
        "UnknownSchemeError",
        "UnwrapError",
        "WrongPassphraseError",
    }
)


def __getattr__(name: str) -> Any:
    """Old names, with a ``DeprecationWarning`` saying where they live now."""
    if name == "inspect":
        warnings.warn(
            "kmsenvelope.inspect is deprecated (it shadowed the standard library's inspect): "
            "use kmsenvelope.inspect_envelope",
            DeprecationWarning,
            stacklevel=2,
        )
        return inspect_envelope
    if name in _DEPRECATED_ERRORS:
        warnings.warn(
            f"kmsenvelope.{name} is deprecated: import it from kmsenvelope.errors",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(errors, name)
    raise AttributeError(f"module 'kmsenvelope' has no attribute {name!r}")


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
