"""The AWS KMS key-encryption key.

* ``SYMMETRIC_DEFAULT`` keys wrap with KMS ``Encrypt`` (the envelope's context is the KMS
  ``EncryptionContext``) and unwrap with ``Decrypt`` naming the key explicitly.
* ``RSA_3072`` / ``RSA_4096`` ``ENCRYPT_DECRYPT`` keys wrap locally with RSAES-OAEP-SHA-256
  under the public key (fetched once with ``GetPublicKey``) and unwrap with KMS ``Decrypt``.
  RSA-OAEP has no associated data: the envelope's header MAC binds the context instead.
  A local wrap never reaches KMS, so the key's state is looked up again (``DescribeKey``)
  once ``key_cache_ttl`` seconds (default 30) have passed: a key disabled or scheduled for
  deletion stops wrapping within that time.

Whatever URI the key was opened with (id, alias, ARN), ``DescribeKey`` resolves it once per
instance, and every ``WrappedKey`` records ``aws-kms:<key ARN>`` -- never an alias, which
could later point at another key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kmsenvelope.errors import (
    ConfigError,
    KeyDestroyedError,
    KeyDisabledError,
    KmsEnvelopeError,
    ProviderError,
    ProviderUnavailableError,
    UnwrapError,
)
from kmsenvelope.kek import WrappedKey

from .client_cache import DEFAULT_CLIENTS, ClientCache, ClientSpec
from .key_uri import SCHEME, KeyRef, KeyRefKind, parse_key_uri, uri_for_arn
from .retry import RetryPolicy, call_with_retries
from .settings import ProviderSettings

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient
    from mypy_boto3_kms.type_defs import DecryptRequestTypeDef, EncryptRequestTypeDef

__all__ = ["RSA_OAEP_SHA_256", "SYMMETRIC_DEFAULT", "AwsKmsKey"]

SYMMETRIC_DEFAULT: Final = "SYMMETRIC_DEFAULT"
RSA_OAEP_SHA_256: Final = "RSAES_OAEP_SHA_256"
T = TypeVar("T")
Algorithm = Literal["SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_256"]
_RSA_SPECS: Final = {"RSA_3072": 3072, "RSA_4096": 4096}
_OAEP: Final = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


@dataclass(frozen=True, slots=True)
class _ResolvedKey:
    """What ``DescribeKey`` told us about the key."""

    arn: str
    algorithm: Algorithm
    rsa_bits: int | None = None


def _state_error(uri: str, arn: str, state: str) -> KmsEnvelopeError | None:
    where = f"{uri}: KMS key {arn} is {state}"
    if state == "Enabled":
        return None
    if state == "Disabled":
        return KeyDisabledError(
            f"{where} (KeyState=Disabled) -- enable it (kms:EnableKey) or use another recipient"
        )
    if state in ("PendingDeletion", "PendingReplicaDeletion"):
        return KeyDestroyedError(
            f"{where} (KeyState={state}) -- it is scheduled for deletion; cancel the deletion "
            "(kms:CancelKeyDeletion) before the waiting period ends, or use another recipient"
        )
    if state in ("Creating", "Updating", "Unavailable"):
        return ProviderUnavailableError(f"{where} (KeyState={state}) -- retry later")
    return KeyDisabledError(f"{where} (KeyState={state}) -- the key cannot be used now")


def _names(returned: object, arn: str) -> bool:
    """Whether a response's ``KeyId`` (an ARN, or a bare key id) names the key ``arn``."""
    return returned in (arn, arn.rpartition(":key/")[2])


class AwsKmsKey:
    """A KEK in AWS KMS, named by an ``aws-kms:`` URI.

    ``settings`` is the ``[providers.aws-kms]`` table. ``client`` injects a ready boto3 KMS
    client (its region must match an ARN's); ``clients`` a client cache other than the
    process-wide one. The instance is thread-safe.
    """

    def __init__(
        self,
        uri: str,
        settings: Mapping[str, Any] | None = None,
        *,
        client: KMSClient | None = None,
        clients: ClientCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ref: KeyRef = parse_key_uri(uri)
        self._clock = clock
        self._settings = ProviderSettings.from_mapping(settings or {})
        self._retry = RetryPolicy.for_settings(self._settings)
        if client is None:
            cache = clients if clients is not None else DEFAULT_CLIENTS
            region = (
                self._ref.region
                or self._settings.region
                or cache.default_region(self._settings.profile)
            )
            if not region:
                raise ConfigError(
                    f"{uri}: no AWS region for this key: set region in [providers.aws-kms], "
                    "AWS_REGION/AWS_DEFAULT_REGION or the profile's region, or name the key by "
                    "its ARN"
                )
            client = cache.client(ClientSpec.for_settings(region, self._settings))
        elif self._ref.region is not None and client.meta.region_name != self._ref.region:
            raise ConfigError(
                f"{uri}: the key is in {self._ref.region} but the client given is for "
                f"{client.meta.region_name}"
            )
        self._client: KMSClient = client
        self._lock = threading.Lock()
        self._resolved: _ResolvedKey | None = None
        self._resolved_at = 0.0
        self._public_key: rsa.RSAPublicKey | None = None

    # -- identity ----------------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        """The URI this KEK was opened with."""
        return self._ref.uri

    @property
    def client(self) -> KMSClient:
        """The boto3 KMS client this KEK calls (shared with other KEKs of the same spec)."""
        return self._client

    @property
    def region(self) -> str:
        """The AWS region of the key."""
        return self._client.meta.region_name

    def __repr__(self) -> str:
        return f"AwsKmsKey({self._ref.uri!r}, region={self.region!r})"

    def _label(self, arn: str | None) -> str:
        """How messages name the key: the URI, plus the resolved ARN when it differs."""
        if arn is None or self._ref.kms_key_id == arn:
            return self._ref.uri
        return f"{self._ref.uri} ({arn})"

    def _call(self, operation: str, call: Callable[[], T], arn: str | None = None) -> T:
        return call_with_retries(self._retry, call, key=self._label(arn), operation=operation)

    # -- resolution --------------------------------------------------------------------------

    def resolve(self) -> str:
        """The key ARN this URI names (one ``DescribeKey`` per instance, then remembered)."""
        return self._key().arn

    def recognizes(self, key_id: str) -> bool:
        """Whether an envelope's recorded ``key_id`` is this key (an alias or key id is resolved
        to its ARN with one ``DescribeKey`` on *this* key, never on the recorded one)."""
        try:
            recorded = parse_key_uri(key_id)
        except ConfigError:
            return False
        if recorded.kind is not KeyRefKind.KEY_ARN:
            return False
        if self._ref.is_key_arn:
            return recorded.kms_key_id == self._ref.kms_key_id
        return recorded.kms_key_id == self.resolve()

    def _key(self, max_age: float | None = None) -> _ResolvedKey:
        """The resolved key; described again if ``max_age`` seconds have passed since."""
        resolved = self._resolved
        if resolved is not None and (max_age is None or self._age() < max_age):
            return resolved
        with self._lock:
            if self._resolved is None:
                self._resolved = self._describe()
                self._resolved_at = self._clock()
            elif max_age is not None and self._age() >= max_age:
                # A state check of the key resolved first, by its ARN: an alias re-pointed
                # since then must not change what this key object wraps with.
                again = self._describe(self._resolved.arn)  # raises if no longer usable
                if again != self._resolved:
                    raise ProviderError(
                        f"{self._ref.uri}: KMS key {self._resolved.arn} changed to {again.arn} "
                        f"({again.algorithm}) since it was resolved"
                    )
                self._resolved_at = self._clock()
            return self._resolved

    def _age(self) -> float:
        return self._clock() - self._resolved_at

    def _describe(self, kms_key_id: str | None = None) -> _ResolvedKey:
        """DescribeKey for this URI's key (or ``kms_key_id``): its ARN, algorithm, state."""
        uri = self._ref.uri
        target = kms_key_id or self._ref.kms_key_id
        response = self._call("DescribeKey", lambda: self._client.describe_key(KeyId=target))
        meta = response.get("KeyMetadata", {})
        arn = meta.get("Arn")
        if not isinstance(arn, str):
            raise ProviderError(f"{uri}: KMS DescribeKey returned no key ARN")
        try:
            recorded = parse_key_uri(uri_for_arn(arn))
        except ConfigError:
            raise ProviderError(f"{uri}: KMS DescribeKey returned {arn!r}, not a key ARN") from None
        if recorded.kind is not KeyRefKind.KEY_ARN:
            raise ProviderError(f"{uri}: KMS DescribeKey returned {arn!r}, not a key ARN")
        if (self._ref.is_key_arn or kms_key_id) and arn != target:
            raise ProviderError(f"{uri}: KMS DescribeKey returned another key, {arn}")
        if recorded.region != self.region:
            raise ProviderError(
                f"{uri}: KMS DescribeKey in {self.region} returned a key of {recorded.region}"
            )
        usage = meta.get("KeyUsage", "ENCRYPT_DECRYPT")
        if usage != "ENCRYPT_DECRYPT":
            raise ConfigError(
                f"{uri}: KMS key {arn} has KeyUsage={usage}; key wrapping needs an "
                "ENCRYPT_DECRYPT key"
            )
        state_error = _state_error(uri, arn, str(meta.get("KeyState", "Enabled")))
        if state_error is not None:
            raise state_error
        spec = meta.get("KeySpec") or meta.get("CustomerMasterKeySpec") or SYMMETRIC_DEFAULT
        if spec == SYMMETRIC_DEFAULT:
            return _ResolvedKey(arn, SYMMETRIC_DEFAULT)
        if spec not in _RSA_SPECS:
            raise ConfigError(
                f"{uri}: KMS key {arn} has KeySpec={spec}; supported are SYMMETRIC_DEFAULT, "
                "RSA_3072 and RSA_4096 (RSA_2048 is too small for new data)"
            )
        if RSA_OAEP_SHA_256 not in meta.get("EncryptionAlgorithms", [RSA_OAEP_SHA_256]):
            raise ConfigError(f"{uri}: KMS key {arn} does not allow {RSA_OAEP_SHA_256}")
        return _ResolvedKey(arn, RSA_OAEP_SHA_256, _RSA_SPECS[spec])

    def _rsa_public_key(self, key: _ResolvedKey) -> rsa.RSAPublicKey:
        """The RSA public key (one ``GetPublicKey`` per instance, on the first wrap only:
        unwrapping needs no ``kms:GetPublicKey`` permission)."""
        public = self._public_key
        if public is not None:
            return public
        with self._lock:
            if self._public_key is None:
                assert key.rsa_bits is not None
                self._public_key = self._fetch_public_key(key.arn, key.rsa_bits)
            return self._public_key

    def _fetch_public_key(self, arn: str, bits: int) -> rsa.RSAPublicKey:
        uri = self._ref.uri
        response = self._call("GetPublicKey", lambda: self._client.get_public_key(KeyId=arn), arn)
        if not _names(response.get("KeyId", arn), arn):
            raise ProviderError(f"{uri}: KMS GetPublicKey returned the key of {response['KeyId']}")
        try:
            key = serialization.load_der_public_key(response["PublicKey"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ProviderError(
                f"{uri}: KMS GetPublicKey returned an unreadable public key: {exc}"
            ) from None
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size != bits:
            raise ProviderError(
                f"{uri}: KMS GetPublicKey for {arn} did not return a {bits}-bit RSA key"
            )
        return key

    # -- wrap / unwrap -----------------------------------------------------------------------

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Wrap ``dek``: KMS Encrypt with ``context``, or RSA-OAEP locally for RSA keys."""
        key = self._key()
        if key.algorithm == RSA_OAEP_SHA_256:
            key = self._key(max_age=self._settings.key_cache_ttl)  # KMS sees no local wrap
            ciphertext = self._rsa_public_key(key).encrypt(bytes(dek), _OAEP)
        else:
            request: EncryptRequestTypeDef = {
                "KeyId": key.arn,
                "Plaintext": bytes(dek),
                "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
            }
            if context:
                request["EncryptionContext"] = dict(context)
            response = self._call("Encrypt", lambda: self._client.encrypt(**request), key.arn)
            returned = response.get("KeyId", key.arn)
            if not _names(returned, key.arn):
                raise ProviderError(
                    f"{self._ref.uri}: KMS Encrypt used {returned} instead of {key.arn}"
                )
            ciphertext = response["CiphertextBlob"]
        return WrappedKey(SCHEME, uri_for_arn(key.arn), key.algorithm, ciphertext)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Unwrap with KMS Decrypt, naming this key explicitly."""
        uri = self._ref.uri
        if wrapped.provider != SCHEME:
            raise UnwrapError(f"{uri}: recipient {wrapped.key_id} is not an AWS KMS recipient")
        try:
            recorded = parse_key_uri(wrapped.key_id)
        except ConfigError:
            raise UnwrapError(f"{uri}: recipient key id {wrapped.key_id!r} is malformed") from None
        if recorded.kind is not KeyRefKind.KEY_ARN:
            raise UnwrapError(f"{uri}: recipient {wrapped.key_id} does not name a key ARN")
        arn = recorded.kms_key_id
        mine = self._ref.kms_key_id if self._ref.is_key_arn else self.resolve()
        if arn != mine:
            raise UnwrapError(f"{uri}: recipient was wrapped by {arn}, not by this key ({mine})")
        request: DecryptRequestTypeDef = {"KeyId": arn, "CiphertextBlob": wrapped.ciphertext}
        if wrapped.algorithm == SYMMETRIC_DEFAULT:
            request["EncryptionAlgorithm"] = SYMMETRIC_DEFAULT
            if context:
                request["EncryptionContext"] = dict(context)
        elif wrapped.algorithm == RSA_OAEP_SHA_256:
            request["EncryptionAlgorithm"] = RSA_OAEP_SHA_256
        else:
            raise UnwrapError(
                f"{uri}: recipient algorithm {wrapped.algorithm!r} is not one this provider "
                f"writes ({SYMMETRIC_DEFAULT}, {RSA_OAEP_SHA_256})"
            )
        response = self._call("Decrypt", lambda: self._client.decrypt(**request), arn)
        returned = response.get("KeyId", arn)
        if not _names(returned, arn):
            raise UnwrapError(f"{uri}: KMS Decrypt used {returned} instead of {arn}")
        plaintext = response.get("Plaintext")
        if not isinstance(plaintext, bytes):
            raise ProviderError(f"{uri}: KMS Decrypt returned no plaintext")
        return plaintext
