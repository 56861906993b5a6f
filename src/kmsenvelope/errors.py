"""Every exception kmsenvelope raises, and the CLI exit code each maps to.

::

    KmsEnvelopeError                    base of everything below            exit 1
    ├── DecryptionError                 an envelope could not be opened
    │   ├── AuthenticationError         opaque: did not authenticate        exit 3
    │   │   └── MalformedEnvelopeError  not an envelope / breaks format     exit 3
    │   └── NoRecipientError            no recipient could unwrap the DEK   exit 4
    ├── ConfigError                     bad configuration or arguments      exit 2
    ├── UnknownSchemeError              no provider for a URI scheme        exit 5
    ├── PluginError                     a plugin failed to load/register    exit 5
    ├── ProviderError                   a provider refused or failed        exit 6
    │   ├── ProviderUnavailableError    unreachable, timed out              exit 7
    │   │   └── ThrottledError          still throttled after retries       exit 7
    │   ├── AccessDeniedError           credentials lack a permission       exit 8
    │   ├── KeyNotFoundError            no such key or key version          exit 9
    │   ├── KeyDisabledError            key (version) disabled/expired      exit 10
    │   ├── KeyDestroyedError           key version destroyed/pending del.  exit 10
    │   └── UnwrapError                 wrapped key rejected by the KEK     exit 6
    ├── KeystoreError                   local HSM keystore problem          exit 11
    │   ├── WrongPassphraseError        passphrase does not open keystore   exit 11
    │   └── KeystoreCorruptError        a keystore file fails to parse      exit 11
    ├── AuditLogError                   audit hash chain broken             exit 12
    └── MigrationIncompleteError        some envelopes were not migrated    exit 13

Messages never contain key material, plaintext or passphrases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AccessDeniedError",
    "AuditLogError",
    "AuthenticationError",
    "ConfigError",
    "DecryptionError",
    "KeyDestroyedError",
    "KeyDisabledError",
    "KeyNotFoundError",
    "KeystoreCorruptError",
    "KeystoreError",
    "KmsEnvelopeError",
    "MalformedEnvelopeError",
    "MigrationIncompleteError",
    "NoRecipientError",
    "PluginError",
    "ProviderError",
    "ProviderUnavailableError",
    "RecipientAttempt",
    "ThrottledError",
    "UnknownSchemeError",
    "UnwrapError",
    "WrongPassphraseError",
]


class KmsEnvelopeError(Exception):
    """Base class of every error raised by kmsenvelope."""

    exit_code: int = 1


class DecryptionError(KmsEnvelopeError):
    """An envelope could not be decrypted (catch this for 'any decrypt failure')."""


class AuthenticationError(DecryptionError):
    """The envelope did not authenticate: tampered, truncated, wrong key or wrong context.

    Deliberately opaque: it never says which byte or check failed.
    """

    exit_code = 3

    def __init__(self, message: str = "envelope did not authenticate") -> None:
        super().__init__(message)


class MalformedEnvelopeError(AuthenticationError):
    """The input is not a kmsenvelope envelope or violates a format limit."""

    def __init__(self, message: str = "input is not a valid kmsenvelope envelope") -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class RecipientAttempt:
    """One recipient the decryptor tried, and why it could not unwrap the data key."""

    key_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key_id}: {self.reason}"


class NoRecipientError(DecryptionError):
    """None of the envelope's recipients could unwrap the data key.

    ``attempts`` lists every recipient, in envelope order, with the reason it failed.
    """

    exit_code = 4

    def __init__(self, attempts: Sequence[RecipientAttempt]) -> None:
        self.attempts: tuple[RecipientAttempt, ...] = tuple(attempts)
        lines = "; ".join(str(a) for a in self.attempts) or "the envelope has no recipients"
        super().__init__(f"no recipient could unwrap the data key ({lines})")


class ConfigError(KmsEnvelopeError):
    """Configuration (file, environment or arguments) is invalid."""

    exit_code = 2


class UnknownSchemeError(KmsEnvelopeError):
    """No installed provider handles this URI scheme."""

    exit_code = 5


class PluginError(KmsEnvelopeError):
    """A plugin could not be loaded or registered a provider badly."""

    exit_code = 5


class ProviderError(KmsEnvelopeError):
    """A provider (KMS, HSM, keystore) refused or failed an operation."""

    exit_code = 6


class ProviderUnavailableError(ProviderError):
    """The provider could not be reached or kept failing transiently.

    ``retry_after`` (seconds), when the service said how long to wait, is honoured by
    callers that retry (bulk migration).
    """

    exit_code = 7

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ThrottledError(ProviderUnavailableError):
    """The provider kept throttling requests after bounded retries."""


class AccessDeniedError(ProviderError):
    """The credentials in use lack a permission for this key."""

    exit_code = 8


class KeyNotFoundError(ProviderError):
    """The key, or the key version, does not exist."""

    exit_code = 9


class KeyDisabledError(ProviderError):
    """The key or key version is disabled (or expired) and may not be used."""

    exit_code = 10


class KeyDestroyedError(ProviderError):
    """The key version was destroyed (or is pending deletion); what it wrapped is lost."""

    exit_code = 10


class UnwrapError(ProviderError):
    """The KEK rejected the wrapped key: tampered, wrong key, or wrong context."""


class KeystoreError(KmsEnvelopeError):
    """The local software HSM keystore cannot be used."""

    exit_code = 11


class WrongPassphraseError(KeystoreError):
    """The passphrase does not open this keystore."""


class KeystoreCorruptError(KeystoreError):
    """A keystore file is unreadable, truncated or fails its integrity check."""


class AuditLogError(KmsEnvelopeError):
    """The audit log's hash chain is broken: an entry was edited, removed or reordered."""

    exit_code = 12


class MigrationIncompleteError(KmsEnvelopeError):
    """A bulk re-wrap finished, but some envelopes failed or changed under it (see the report)."""

    exit_code = 13
