"""The Cloud KMS key-encryption key.

* ``GOOGLE_SYMMETRIC_ENCRYPTION`` keys wrap with ``Encrypt`` and unwrap with ``Decrypt``, the
  envelope's canonical encryption context as additional authenticated data (:func:`context_aad`),
  so the service itself refuses another context. A key named without a version encrypts with
  its primary version; the stanza records the version ``Encrypt`` reports.
* ``RSA_DECRYPT_OAEP_*`` keys wrap locally with the version's public key (``GetPublicKey``,
  fetched again once ``key_cache_ttl`` seconds have passed, so a disabled version stops wrapping
  within that time) and unwrap with ``AsymmetricDecrypt``. RSA-OAEP has no associated data: the
  envelope's header MAC binds the context for these.

Which of the two a key is, the provider learns from the service: it encrypts first (what a
symmetric key needs, with only the encrypter role); if the service refuses because the key is
not symmetric, it asks for the public key (a versioned URI) or the newest enabled version (a
versionless one). Every request and response carries CRC32C checksums (:mod:`.integrity`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.api_core import exceptions as api
from google.auth import exceptions as auth_errors
from google.cloud.kms_v1 import types as kms

from kmsenvelope.errors import (
    AccessDeniedError,
    ConfigError,
    KeyDisabledError,
    KeyNotFoundError,
    KmsEnvelopeError,
    ProviderError,
    UnwrapError,
)
from kmsenvelope.format.header import encode_context
from kmsenvelope.kek import WrappedKey

from .clients import DEFAULT_CLIENTS, ClientCache, ClientSpec
from .errors import build_retry, status_of, to_library_error
from .integrity import check_crc, check_verified, crc32c
from .settings import GcpSettings, parse_settings
from .uri import SCHEME, KeyName, parse_key_uri, parse_resource

if TYPE_CHECKING:
    from google.cloud.kms_v1 import KeyManagementServiceClient

__all__ = ["AAD_LABEL", "RSA_OAEP_ALGORITHM", "SYMMETRIC", "GcpKmsKey", "context_aad"]

SYMMETRIC: Final = "GOOGLE_SYMMETRIC_ENCRYPTION"
RSA_OAEP_ALGORITHM: Final = re.compile(r"RSA_DECRYPT_OAEP_(2048|3072|4096)_SHA(1|256|512)")
"""Cloud KMS's RSA-OAEP decryption algorithms: key size, then the OAEP (and MGF1) hash."""
AAD_LABEL: Final = "context-v1"
"""``params["aad"]`` of a symmetric stanza: the AAD is :func:`context_aad` (change it, change
this)."""
_AAD_PREFIX: Final = b"kmsenvelope-gcp-kms/v1\x00"
_HASHES: Final[dict[str, Callable[[], hashes.HashAlgorithm]]] = {
    "1": hashes.SHA1,  # OAEP's hash, not a signature hash: RSA_DECRYPT_OAEP_*_SHA1
    "256": hashes.SHA256,
    "512": hashes.SHA512,
}
_NOT_SYMMETRIC_STATUSES: Final = frozenset({"FAILED_PRECONDITION", "INVALID_ARGUMENT"})
T = TypeVar("T")


def context_aad(context: Mapping[str, str]) -> bytes:
    """The AAD sent with Encrypt/Decrypt: a fixed label, then the canonical context (format
    spec 5.4), so a ciphertext of another application or context never decrypts as ours."""
    return _AAD_PREFIX + encode_context(context)


def _oaep(algorithm: str) -> padding.OAEP:
    found = RSA_OAEP_ALGORITHM.fullmatch(algorithm)
    if found is None:
        raise ValueError(f"not a Cloud KMS RSA-OAEP algorithm: {algorithm!r}")
    digest = _HASHES[found.group(2)]()
    return padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)


def _enum_name(value: Any) -> str:
    """The name of a proto enum value (``GOOGLE_SYMMETRIC_ENCRYPTION``)."""
    return str(getattr(value, "name", value))


class _NotRsa(Exception):
    """While probing after a refused Encrypt: the key has no enabled RSA version."""


@dataclass(frozen=True, slots=True)
class _RsaVersion:
    """An RSA key version and its public key, as ``GetPublicKey`` returned them."""

    name: KeyName
    algorithm: str
    public_key: rsa.RSAPublicKey
    fetched_at: float


class GcpKmsKey:
    """A key (or one key version) in Cloud KMS, named by a ``gcp-kms:`` URI.

    ``settings`` is the ``[providers.gcp-kms]`` table; ``clients`` a client cache other than
    the process-wide one. Opening makes no call; the instance is thread-safe.
    """

    def __init__(
        self,
        uri: str,
        settings: Mapping[str, Any] | None = None,
        *,
        clients: ClientCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cache = clients if clients is not None else DEFAULT_CLIENTS
        self._setup(parse_key_uri(uri), parse_settings(settings or {}), cache, clock, None)

    def _setup(
        self,
        name: KeyName,
        settings: GcpSettings,
        clients: ClientCache,
        clock: Callable[[], float],
        symmetric: bool | None,
    ) -> None:
        self._name = name
        self._settings = settings
        self._clients = clients
        self._clock = clock
        self._retry = build_retry(settings)
        self._lock = threading.Lock()
        self._symmetric = symmetric  # None: not known yet
        self._rsa: _RsaVersion | None = None
        self._latest: tuple[GcpKmsKey, float] | None = None

    def _derived(self, name: KeyName, *, symmetric: bool) -> GcpKmsKey:
        """This key at another version, with the same settings and clients."""
        kek = GcpKmsKey.__new__(GcpKmsKey)
        kek._setup(name, self._settings, self._clients, self._clock, symmetric)
        return kek

    # -- identity ----------------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        """The canonical URI this KEK was opened with (a key, or one of its versions)."""
        return self._name.uri

    @property
    def settings(self) -> GcpSettings:
        """The validated ``[providers.gcp-kms]`` settings."""
        return self._settings

    def __repr__(self) -> str:
        return f"GcpKmsKey({self._name.uri!r}, transport={self._settings.transport!r})"

    def recognizes(self, key_id: str) -> bool:
        """Whether a stanza's recorded ``key_id`` is a version of this key (no call made)."""
        try:
            recorded = parse_key_uri(key_id)
        except ConfigError:
            return False
        if recorded.version is None or not recorded.same_key(self._name):
            return False
        return self._name.version in (None, recorded.version)

    # -- calls -------------------------------------------------------------------------------

    def _call(
        self, operation: str, call: Callable[[KeyManagementServiceClient], T], target: str
    ) -> T:
        """Run one SDK call (with the SDK's retries); its failure as a kmsenvelope error."""
        try:
            client = self._clients.client(ClientSpec.for_settings(self._settings))
            return call(client)
        except KmsEnvelopeError:
            raise
        except (api.GoogleAPIError, auth_errors.GoogleAuthError) as exc:
            raise to_library_error(exc, key=target, operation=operation) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("requests"):  # the REST transport's network
                raise to_library_error(exc, key=target, operation=operation) from exc
            raise

    @property
    def _timeout(self) -> float:
        return self._settings.timeout

    # -- symmetric ---------------------------------------------------------------------------

    def _encrypt(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        aad = context_aad(context)
        request = kms.EncryptRequest(
            name=self._name.resource,
            plaintext=dek,
            plaintext_crc32c=crc32c(dek),
            additional_authenticated_data=aad,
            additional_authenticated_data_crc32c=crc32c(aad),
        )
        response = self._call(
            "Encrypt",
            lambda c: c.encrypt(request=request, retry=self._retry, timeout=self._timeout),
            self.key_id,
        )
        where = f"{self.key_id}: Cloud KMS Encrypt"
        check_verified(where, "plaintext", bool(response.verified_plaintext_crc32c))
        check_verified(
            where,
            "additional_authenticated_data",
            bool(response.verified_additional_authenticated_data_crc32c),
        )
        ciphertext = bytes(response.ciphertext)
        check_crc(where, "ciphertext", ciphertext, response.ciphertext_crc32c)
        used = parse_resource(str(response.name))
        if (
            used is None
            or used.version is None
            or not used.same_key(self._name)
            or self._name.version not in (None, used.version)
        ):
            raise ProviderError(
                f"{where}: the service reports version {str(response.name)!r}, which is not a "
                "version of this key"
            )
        return WrappedKey(SCHEME, used.uri, SYMMETRIC, ciphertext, {"aad": AAD_LABEL})

    def _decrypt(self, recorded: KeyName, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        scheme = wrapped.params.get("aad")
        if scheme != AAD_LABEL:
            raise UnwrapError(
                f"{wrapped.key_id}: {SYMMETRIC} stanza with an unknown AAD scheme {scheme!r} "
                f"(this provider writes {AAD_LABEL!r})"
            )
        aad = context_aad(context)
        ciphertext = wrapped.ciphertext
        request = kms.DecryptRequest(
            name=recorded.key_resource,  # the ciphertext names its version; Decrypt takes the key
            ciphertext=ciphertext,
            ciphertext_crc32c=crc32c(ciphertext),
            additional_authenticated_data=aad,
            additional_authenticated_data_crc32c=crc32c(aad),
        )
        response = self._call(
            "Decrypt",
            lambda c: c.decrypt(request=request, retry=self._retry, timeout=self._timeout),
            wrapped.key_id,
        )
        plaintext = bytes(response.plaintext)
        check_crc(
            f"{wrapped.key_id}: Cloud KMS Decrypt",
            "plaintext",
            plaintext,
            response.plaintext_crc32c,
        )
        return plaintext

    # -- RSA ---------------------------------------------------------------------------------

    def _newest_enabled_version(self) -> tuple[KeyName, str] | None:
        """The highest-numbered ENABLED version of this key and its algorithm (None: none)."""
        request = kms.ListCryptoKeyVersionsRequest(
            parent=self._name.key_resource, filter="state=ENABLED"
        )
        versions = self._call(
            "ListCryptoKeyVersions",
            lambda c: list(
                c.list_crypto_key_versions(
                    request=request, retry=self._retry, timeout=self._timeout
                )
            ),
            self.key_id,
        )
        best: tuple[KeyName, str] | None = None
        for version in versions:
            name = parse_resource(str(version.name))
            if (
                name is None
                or name.version is None
                or not name.same_key(self._name)
                or _enum_name(version.state) != "ENABLED"
            ):
                continue
            if best is None or (best[0].version or 0) < name.version:
                best = (name, _enum_name(version.algorithm))
        return best

    def _newest_rsa_version(self, *, probing: bool = False) -> KeyName:
        """The version a versionless RSA URI wraps with: the newest enabled one.

        ``probing`` (Encrypt was just refused): ``_NotRsa`` when this is no RSA key.
        """
        newest = self._newest_enabled_version()
        if newest is None:
            if probing:
                raise _NotRsa
            raise KeyDisabledError(
                f"{self.key_id}: the key has no ENABLED version to wrap with; enable one "
                "(gcloud kms keys versions enable) or create one"
            )
        version, algorithm = newest
        if RSA_OAEP_ALGORITHM.fullmatch(algorithm) is None:
            if probing:
                raise _NotRsa
            raise ConfigError(
                f"{version.uri} is a {algorithm} key version; wrapping needs a {SYMMETRIC} "
                "key or an RSA_DECRYPT_OAEP_* key"
            )
        return version

    def _fetch_public_key(self, version: KeyName) -> _RsaVersion:
        request = kms.GetPublicKeyRequest(name=version.resource)
        response = self._call(
            "GetPublicKey",
            lambda c: c.get_public_key(request=request, retry=self._retry, timeout=self._timeout),
            version.uri,
        )
        where = f"{version.uri}: Cloud KMS GetPublicKey"
        pem = str(response.pem).encode("ascii", "replace")
        check_crc(where, "pem", pem, response.pem_crc32c)
        if str(response.name) != version.resource:
            raise ProviderError(f"{where}: the service returned the key of {response.name!r}")
        algorithm = _enum_name(response.algorithm)
        found = RSA_OAEP_ALGORITHM.fullmatch(algorithm)
        if found is None:
            raise ConfigError(
                f"{version.uri} is a {algorithm} key version; wrapping needs a "
                f"{SYMMETRIC} key or an RSA_DECRYPT_OAEP_* key"
            )
        try:
            public_key = serialization.load_pem_public_key(pem)
        except ValueError:
            raise ProviderError(f"{where}: the service returned an unreadable public key") from None
        bits = int(found.group(1))
        if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size != bits:
            raise ProviderError(
                f"{where}: the public key is not the {bits}-bit RSA key {algorithm} says"
            )
        return _RsaVersion(version, algorithm, public_key, self._clock())

    def _resolve_rsa(self, *, probing: bool = False) -> _RsaVersion:
        """The RSA version this URI wraps with (the one it names, else the newest enabled one)
        and its public key."""
        version = self._name
        if version.version is None:
            version = self._newest_rsa_version(probing=probing)
        return self._fetch_public_key(version)

    def _current_rsa(self) -> _RsaVersion:
        """The RSA version and public key, fetched again when ``key_cache_ttl`` has passed (a
        local wrap never reaches the service, so this is when a disabled version is noticed)."""
        known = self._rsa
        if known is not None and self._clock() - known.fetched_at < self._settings.key_cache_ttl:
            return known
        fresh = self._resolve_rsa()
        if (
            known is not None
            and known.name == fresh.name
            and known.public_key.public_numbers() != fresh.public_key.public_numbers()
        ):
            raise ProviderError(
                f"{fresh.name.uri}: the version's public key changed since it was fetched"
            )
        with self._lock:
            self._rsa = fresh
        return fresh

    def _asymmetric_decrypt(self, recorded: KeyName, wrapped: WrappedKey) -> bytes:
        ciphertext = wrapped.ciphertext
        request = kms.AsymmetricDecryptRequest(
            name=recorded.resource, ciphertext=ciphertext, ciphertext_crc32c=crc32c(ciphertext)
        )
        response = self._call(
            "AsymmetricDecrypt",
            lambda c: c.asymmetric_decrypt(
                request=request, retry=self._retry, timeout=self._timeout
            ),
            wrapped.key_id,
        )
        where = f"{wrapped.key_id}: Cloud KMS AsymmetricDecrypt"
        check_verified(where, "ciphertext", bool(response.verified_ciphertext_crc32c))
        plaintext = bytes(response.plaintext)
        check_crc(where, "plaintext", plaintext, response.plaintext_crc32c)
        return plaintext

    # -- KeyEncryptionKey --------------------------------------------------------------------

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Wrap ``dek``: ``Encrypt`` with ``context`` as AAD, or RSA-OAEP locally for RSA keys."""
        dek = bytes(dek)
        if self._symmetric is False:
            return self._rsa_wrap(dek)
        try:
            wrapped = self._encrypt(dek, context)
        except ProviderError as refused:
            if not self._is_rsa_key(refused):
                raise
            return self._rsa_wrap(dek)
        self._symmetric = True
        return wrapped

    def _rsa_wrap(self, dek: bytes) -> WrappedKey:
        version = self._current_rsa()
        ciphertext = version.public_key.encrypt(dek, _oaep(version.algorithm))
        return WrappedKey(SCHEME, version.name.uri, version.algorithm, ciphertext)

    def _is_rsa_key(self, refused: ProviderError) -> bool:
        """After Encrypt was refused: whether this is an RSA key (then remembered as one)."""
        known = self._symmetric
        if known is not None:
            return not known  # False: another thread learned meanwhile that it is an RSA key
        if status_of(refused.__cause__) not in _NOT_SYMMETRIC_STATUSES:
            return False
        try:
            found = self._resolve_rsa(probing=True)
        except (_NotRsa, ConfigError, AccessDeniedError, KeyNotFoundError):
            return False  # not an RSA key, or not visible to us: Encrypt's refusal stands
        except ProviderError as probe:
            if type(probe) is ProviderError:
                return False  # e.g. no public key: a symmetric key whose Encrypt failed
            raise  # an RSA version that is disabled, a damaged answer, an outage: say that
        with self._lock:
            self._rsa = found
            self._symmetric = False
        return True

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Unwrap with the key version recorded in ``wrapped`` (refused without a call when
        it names another key)."""
        if wrapped.provider != SCHEME:
            raise UnwrapError(f"{self.key_id}: recipient {wrapped.key_id} is not a {SCHEME} one")
        try:
            recorded = parse_key_uri(wrapped.key_id)
        except ConfigError:
            raise UnwrapError(
                f"{self.key_id}: the recorded key id {wrapped.key_id!r} is not a {SCHEME} URI"
            ) from None
        if recorded.version is None:
            raise UnwrapError(f"{self.key_id}: the recorded key id {wrapped.key_id} has no version")
        if not recorded.same_key(self._name):
            raise UnwrapError(f"{self.key_id}: {wrapped.key_id} was wrapped by another key")
        if self._name.version not in (None, recorded.version):
            raise UnwrapError(
                f"{self.key_id}: {wrapped.key_id} was wrapped by another version of this key"
            )
        if wrapped.algorithm == SYMMETRIC:
            return self._decrypt(recorded, wrapped, context)
        if RSA_OAEP_ALGORITHM.fullmatch(wrapped.algorithm):
            return self._asymmetric_decrypt(recorded, wrapped)
        raise UnwrapError(
            f"{wrapped.key_id}: unsupported algorithm {wrapped.algorithm!r} (this provider "
            f"writes {SYMMETRIC} and RSA_DECRYPT_OAEP_*)"
        )

    # -- rotation ----------------------------------------------------------------------------

    def latest(self) -> GcpKmsKey:
        """This key at its current version, for ``rewrap --rotate``: the primary version of a
        symmetric key, the newest enabled version of an RSA key (``GetCryptoKey``, remembered
        for ``key_cache_ttl`` seconds)."""
        known = self._latest
        if known is not None and self._clock() - known[1] < self._settings.key_cache_ttl:
            return known[0]
        request = kms.GetCryptoKeyRequest(name=self._name.key_resource)
        crypto_key = self._call(
            "GetCryptoKey",
            lambda c: c.get_crypto_key(request=request, retry=self._retry, timeout=self._timeout),
            self.key_id,
        )
        purpose = _enum_name(crypto_key.purpose)
        if purpose == "ENCRYPT_DECRYPT":
            primary = parse_resource(str(crypto_key.primary.name))
            if primary is None or primary.version is None or not primary.same_key(self._name):
                raise ProviderError(
                    f"{self.key_id}: Cloud KMS GetCryptoKey reports no primary version of this key"
                )
            current, symmetric = primary, True
        elif purpose == "ASYMMETRIC_DECRYPT":
            current, symmetric = self._newest_rsa_version(), False
        else:
            raise ConfigError(
                f"{self.key_id}: the key's purpose is {purpose}; wrapping needs ENCRYPT_DECRYPT "
                "or ASYMMETRIC_DECRYPT"
            )
        kek = self if current == self._name else self._derived(current, symmetric=symmetric)
        with self._lock:
            self._latest = (kek, self._clock())
        return kek
