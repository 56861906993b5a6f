"""Every exception kmsenvelope raises, and the CLI exit code each maps to.

::

    KmsEnvelopeError                    base of everything below            exit 1
    ├── DecryptionError                 an envelope could not be opened
    │   ├── AuthenticationError         opaque: did not authenticate        exit 3
    │   │   └── MalformedEnvelopeError  not an envelope / breaks format     exit 3
    │   └── NoRecipientError            no recipient could unwrap the DEK   exit 4 (or 7-10)
    ├── ConfigError                     bad configuration or arguments      exit 2
    ├── UnknownSchemeError              no provider for a URI scheme        exit 5
    ├── PluginError                     a plugin failed to load/register    exit 5
    ├── ProviderError                   a provider refused or failed        exit 6
    │   ├── ProviderUnavailableError    unreachable, timed out (retryable)  exit 7
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
    │   └── AuditSinkError              an audit sink failed (auditing/)    exit 12
    └── MigrationIncompleteError        some envelopes were not migrated    exit 13

Each class states its exit code once, on its ``class`` line (``exit_code=N``); a subclass that
states none keeps its base's.

``NoRecipientError.attempts`` holds one :class:`RecipientAttempt` per recipient of the envelope:
its ``key_id``, the ``reason`` (one line), the ``error`` its provider raised (None when no
provider was called for it: key not allowed, no provider installed, attempt cap reached) and
``retryable`` (the error is a ``ProviderUnavailableError``: unreachable or throttled, try again
later). Its exit code comes from those errors: when every recipient whose provider was called
failed with the same kind -- unavailable or throttled (7), access denied (8), not found (9),
disabled or destroyed (10) -- that kind's code; otherwise (mixed kinds, no provider called, a
rejected wrapped key, a keystore or unexpected failure) 4.

Messages never contain key material, plaintext or passphrases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "AccessDeniedError",
    "AuditLogError",
    "AuditSinkError",
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

RECIPIENT_FAILURE_CODES = frozenset({7, 8, 9, 10})
"""Exit codes a ``NoRecipientError`` takes over when every contacted recipient failed so."""


class KmsEnvelopeError(Exception):
    """Base class of every error raised by kmsenvelope."""

    exit_code: int = 1

    def __init_subclass__(cls, *, exit_code: int | None = None) -> None:
        """``class X(Base, exit_code=N)`` sets X's exit code; without it X keeps Base's."""
        super().__init_subclass__()
        if exit_code is not None:
            cls.exit_code = exit_code


class DecryptionError(KmsEnvelopeError):
    """An envelope could not be decrypted (catch this for 'any decrypt failure')."""


class AuthenticationError(DecryptionError, exit_code=3):
    """The envelope did not authenticate: tampered, truncated, wrong key or wrong context.

    Deliberately opaque: it never says which byte or check failed.
    """

    default_message: ClassVar[str] = "envelope did not authenticate"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(self.default_message if message is None else message)


class MalformedEnvelopeError(AuthenticationError):
    """The input is not a kmsenvelope envelope or violates a format limit."""

    default_message = "input is not a valid kmsenvelope envelope"


class ConfigError(KmsEnvelopeError, exit_code=2):
    """Configuration (file, environment or arguments) is invalid."""


class UnknownSchemeError(KmsEnvelopeError, exit_code=5):
    """No installed provider handles this URI scheme."""


class PluginError(KmsEnvelopeError, exit_code=5):
    """A plugin could not be loaded or registered a provider badly."""


class ProviderError(KmsEnvelopeError, exit_code=6):
    """A provider (KMS, HSM, keystore) refused or failed an operation."""


class ProviderUnavailableError(ProviderError, exit_code=7):
    """The provider could not be reached or kept failing transiently: retrying later may work.

    ``retry_after`` (seconds), when the service said how long to wait, is honoured by
    callers that retry (bulk migration).
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ThrottledError(ProviderUnavailableError):
    """The provider kept throttling requests after bounded retries."""


class AccessDeniedError(ProviderError, exit_code=8):
    """The credentials in use lack a permission for this key."""


class KeyNotFoundError(ProviderError, exit_code=9):
    """The key, or the key version, does not exist."""


class KeyDisabledError(ProviderError, exit_code=10):
    """The key or key version is disabled (or expired) and may not be used."""


class KeyDestroyedError(ProviderError, exit_code=10):
    """The key version was destroyed (or is pending deletion); what it wrapped is lost."""


class UnwrapError(ProviderError):
    """The KEK rejected the wrapped key: tampered, wrong key, or wrong context."""


class KeystoreError(KmsEnvelopeError, exit_code=11):
    """The local software HSM keystore cannot be used."""


class WrongPassphraseError(KeystoreError):
    """The passphrase does not open this keystore."""


class KeystoreCorruptError(KeystoreError):
    """A keystore file is unreadable, truncated or fails its integrity check."""


class AuditLogError(KmsEnvelopeError, exit_code=12):
    """The audit log's hash chain is broken: an entry was edited, removed or reordered."""


class AuditSinkError(AuditLogError):
    """An audit sink could not take an event, so the operation it records did not complete
    (exit code 12, as for any audit log failure)."""


class MigrationIncompleteError(KmsEnvelopeError, exit_code=13):
    """A bulk re-wrap finished, but some envelopes failed or changed under it (see the report)."""


@dataclass(frozen=True, slots=True)
class RecipientAttempt:
    """One recipient the decryptor tried: why it could not unwrap the data key, and the error
    its provider raised (None when no provider was called for it)."""

    key_id: str
    reason: str
    error: KmsEnvelopeError | None = field(default=None, compare=False)

    @property
    def retryable(self) -> bool:
        """The provider was unreachable or throttled: trying again later may succeed."""
        return isinstance(self.error, ProviderUnavailableError)

    def __str__(self) -> str:
        return f"{self.key_id}: {self.reason}"


class NoRecipientError(DecryptionError, exit_code=4):
    """None of the envelope's recipients could unwrap the data key.

    ``attempts`` lists every recipient, in envelope order, with the reason and error; the exit
    code comes from those errors (see the module documentation).
    """

    def __init__(self, attempts: Sequence[RecipientAttempt]) -> None:
        self.attempts: tuple[RecipientAttempt, ...] = tuple(attempts)
        codes = {a.error.exit_code for a in self.attempts if a.error is not None}
        if len(codes) == 1 and codes <= RECIPIENT_FAILURE_CODES:
            self.exit_code = codes.pop()
        lines = "; ".join(str(a) for a in self.attempts) or "the envelope has no recipients"
        super().__init__(f"no recipient could unwrap the data key ({lines})")

    def __reduce__(self) -> tuple[type[NoRecipientError], tuple[tuple[RecipientAttempt, ...]]]:
        """Pickled with its attempts (a process pool or a cluster carries it between processes):
        the default would rebuild it from its message."""
        return type(self), (self.attempts,)

    @property
    def retryable(self) -> bool:
        """Every recipient whose provider was called failed transiently: retry later."""
        contacted = [a for a in self.attempts if a.error is not None]
        return bool(contacted) and all(a.retryable for a in contacted)
