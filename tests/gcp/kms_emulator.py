"""An emulator of Cloud KMS's KeyManagementService, for driving the real ``google-cloud-kms``
client in tests (Google publishes no emulator).

It serves the methods the provider uses -- Encrypt, Decrypt, AsymmetricDecrypt, GetPublicKey,
GetCryptoKey, ListCryptoKeyVersions -- over gRPC (``grpc.method_handlers_generic_handler`` with
the client's own request/response types) and over REST (the JSON mapping the client's REST
transport speaks), on free ports of 127.0.0.1. It behaves as the service documents:

* symmetric versions encrypt with AES-256-GCM; the additional authenticated data is bound, so
  decrypting with another AAD fails (INVALID_ARGUMENT), as does a ciphertext of another key;
* CRC32C fields of requests are checked (a mismatch is INVALID_ARGUMENT) and responses carry
  their own plus the ``verified_*`` flags;
* versions that are not ENABLED are refused (FAILED_PRECONDITION, naming the state); a key's
  primary version is what Encrypt uses on the key's name; rotation adds a primary version;
* RSA_DECRYPT_OAEP_* versions hold real RSA key pairs (pyca/cryptography);
* resource names are validated (INVALID_ARGUMENT), unknown keys are NOT_FOUND, keys the test
  marks as denied are PERMISSION_DENIED.

Faults on demand: ``fail_next`` (UNAVAILABLE or any code for the next calls), ``corrupt_requests``
(the request's data damaged "in transit", so its CRC32C no longer matches), ``corrupt_responses``
(a response's data damaged after its CRC32C was computed), ``unverified`` (a response that does
not confirm the request's checksums). ``calls`` counts calls per method; ``received`` records
(method, name, AAD) of every call.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import google_crc32c
import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud.kms_v1 import types as kms

SERVICE = "google.cloud.kms.v1.KeyManagementService"
SYMMETRIC = "GOOGLE_SYMMETRIC_ENCRYPTION"
MAX_DATA = 64 * 1024
_KEY = r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+"
_KEY_NAME = re.compile(_KEY)
_VERSION_NAME = re.compile(rf"(?P<key>{_KEY})/cryptoKeyVersions/(?P<version>[0-9]+)")
_RSA = re.compile(r"RSA_DECRYPT_OAEP_(2048|3072|4096)_SHA(1|256|512)")
_MAGIC = b"EMU1"
_HASHES = {"1": hashes.SHA1, "256": hashes.SHA256, "512": hashes.SHA512}
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(bytes(data)))


class Abort(Exception):
    """A call's error status (gRPC code and message), as the service would answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Version:
    number: int
    algorithm: str
    state: str = "ENABLED"
    secret: bytes = b""  # AES-256 key of a symmetric version
    private_key: rsa.RSAPrivateKey | None = None


@dataclass
class Key:
    name: str
    purpose: str  # ENCRYPT_DECRYPT or ASYMMETRIC_DECRYPT
    algorithm: str
    uid: bytes = field(default_factory=lambda: os.urandom(8))
    versions: dict[int, Version] = field(default_factory=dict)
    primary: int | None = None


class KmsEmulator:
    """The service's state, its fault switches, and the gRPC and REST servers."""

    def __init__(self, rsa_keys: Iterable[rsa.RSAPrivateKey] = ()) -> None:
        self._lock = threading.RLock()
        self.keys: dict[str, Key] = {}
        self.denied: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.received: list[tuple[str, str, bytes]] = []
        self._failures: list[tuple[frozenset[str] | None, grpc.StatusCode]] = []
        self._corrupt_requests: Counter[str] = Counter()
        self._corrupt_responses: Counter[str] = Counter()
        self._unverified: Counter[str] = Counter()
        self._rsa_pool = list(rsa_keys)
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._tls_http: ThreadingHTTPServer | None = None
        self.principals: dict[str, rsa.RSAPublicKey] = {}  # service account -> its public key
        self.authenticated: list[str] = []  # who made each authenticated (TLS REST) call
        self.grpc_port = 0
        self.rest_port = 0

    # -- servers -------------------------------------------------------------------------------

    @property
    def grpc_host(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_host(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def start(self) -> KmsEmulator:
        """Serve gRPC and REST on 127.0.0.1 (the same ports again after a ``stop``)."""
        server = grpc.server(ThreadPoolExecutor(max_workers=8))
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._grpc_method(name),
                request_deserializer=request_type.deserialize,
                response_serializer=response_type.serialize,
            )
            for name, (request_type, response_type, _) in self._methods().items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.grpc_port = server.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        server.start()
        self._grpc = server
        emulator = self

        class Handler(_RestHandler):
            kms = emulator

        self._http = ThreadingHTTPServer(("127.0.0.1", self.rest_port), Handler)
        self._http.daemon_threads = True
        self.rest_port = self._http.server_address[1]
        threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def start_tls_rest(self, certfile: str, keyfile: str) -> str:
        """Also serve REST over TLS, where every call must carry a service account's
        self-signed JWT (``Authorization: Bearer``) signed by a key in ``principals``;
        HOST:PORT of that endpoint."""
        emulator = self

        class Handler(_RestHandler):
            kms = emulator
            require_auth = True

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._tls_http = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return f"127.0.0.1:{server.server_address[1]}"

    def authenticate(self, authorization: str | None) -> None:
        """Who signed the bearer JWT (recorded), or UNAUTHENTICATED."""
        refused = Abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
        )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme != "Bearer" or token.count(".") != 2:
            raise refused
        head, body, signature = token.split(".")

        def decode(part: str) -> bytes:
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        try:
            claims = json.loads(decode(body))
            public_key = self.principals[claims["iss"]]
            public_key.verify(
                decode(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except Exception:
            raise refused from None
        if claims.get("sub") != claims["iss"] or float(claims.get("exp", 0)) < time.time():
            raise refused
        with self._lock:
            self.authenticated.append(claims["iss"])

    def stop(self) -> None:
        """Stop serving: the ports refuse connections until ``start``."""
        if self._tls_http is not None:
            self._tls_http.shutdown()
            self._tls_http.server_close()
            self._tls_http = None
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def _methods(
        self,
    ) -> dict[str, tuple[Any, Any, Callable[[Any], Any]]]:
        return {
            "Encrypt": (kms.EncryptRequest, kms.EncryptResponse, self.encrypt),
            "Decrypt": (kms.DecryptRequest, kms.DecryptResponse, self.decrypt),
            "AsymmetricDecrypt": (
                kms.AsymmetricDecryptRequest,
                kms.AsymmetricDecryptResponse,
                self.asymmetric_decrypt,
            ),
            "GetPublicKey": (kms.GetPublicKeyRequest, kms.PublicKey, self.get_public_key),
            "GetCryptoKey": (kms.GetCryptoKeyRequest, kms.CryptoKey, self.get_crypto_key),
            "ListCryptoKeyVersions": (
                kms.ListCryptoKeyVersionsRequest,
                kms.ListCryptoKeyVersionsResponse,
                self.list_crypto_key_versions,
            ),
        }

    def _grpc_method(self, name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return self.dispatch(name, request)
            except Abort as abort:
                context.abort(abort.code, abort.message)

        return handle

    def dispatch(self, method: str, request: Any) -> Any:
        """Count the call, apply any injected failure, then serve it."""
        with self._lock:
            self.calls[method] += 1
            for index, (methods, code) in enumerate(self._failures):
                if methods is None or method in methods:
                    del self._failures[index]
                    raise Abort(code, f"injected {code.name} for {method}")
        return self._methods()[method][2](request)

    # -- administration (what gcloud would do) ------------------------------------------------

    def create_key(
        self,
        key_id: str,
        *,
        algorithm: str = SYMMETRIC,
        ring: str = "ring",
        location: str = "global",
        project: str = "test-project",
        versions: int = 1,
    ) -> str:
        """A new key with ``versions`` enabled versions (the last is primary); its name."""
        name = f"projects/{project}/locations/{location}/keyRings/{ring}/cryptoKeys/{key_id}"
        purpose = "ENCRYPT_DECRYPT" if algorithm == SYMMETRIC else "ASYMMETRIC_DECRYPT"
        if purpose == "ASYMMETRIC_DECRYPT" and not _RSA.fullmatch(algorithm):
            raise ValueError(f"unsupported algorithm {algorithm}")
        with self._lock:
            if name in self.keys:
                raise ValueError(f"{name} exists")
            self.keys[name] = Key(name, purpose, algorithm)
        for _ in range(versions):
            self.add_version(name)
        return name

    def add_version(self, key_name: str, *, primary: bool = True) -> str:
        """A new enabled version (rotation); it becomes primary for a symmetric key."""
        with self._lock:
            key = self.keys[key_name]
            number = max(key.versions, default=0) + 1
            version = Version(number, key.algorithm)
            if key.purpose == "ENCRYPT_DECRYPT":
                version.secret = os.urandom(32)
                if primary:
                    key.primary = number
            else:
                bits = int(_RSA.fullmatch(key.algorithm).group(1))  # type: ignore[union-attr]
                pooled = [k for k in self._rsa_pool if k.key_size == bits]
                if pooled:
                    version.private_key = pooled[0]
                    self._rsa_pool.remove(pooled[0])
                else:
                    version.private_key = rsa.generate_private_key(65537, bits)
            key.versions[number] = version
            return f"{key_name}/cryptoKeyVersions/{number}"

    def set_primary(self, version_name: str) -> None:
        key, version = self._version(version_name)
        with self._lock:
            key.primary = version.number

    def set_state(self, version_name: str, state: str) -> None:
        """ENABLED, DISABLED, DESTROY_SCHEDULED or DESTROYED."""
        _key, version = self._version(version_name)
        with self._lock:
            version.state = state

    def deny(self, key_name: str) -> None:
        """Every call on this key (and its versions) is PERMISSION_DENIED."""
        with self._lock:
            self.denied.add(key_name)

    def fail_next(
        self,
        count: int = 1,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        methods: Iterable[str] | None = None,
    ) -> None:
        """The next ``count`` calls (of ``methods``, default any) fail with ``code``."""
        only = frozenset(methods) if methods is not None else None
        with self._lock:
            self._failures += [(only, code)] * count

    def corrupt_requests(self, method: str, count: int = 1) -> None:
        """Damage the data of the next ``count`` ``method`` requests as they arrive."""
        with self._lock:
            self._corrupt_requests[method] += count

    def corrupt_responses(self, method: str, count: int = 1) -> None:
        """Damage the data of the next ``count`` ``method`` responses after their CRC32C."""
        with self._lock:
            self._corrupt_responses[method] += count

    def unverified(self, method: str, count: int = 1) -> None:
        """The next ``count`` ``method`` responses do not confirm the request's checksums."""
        with self._lock:
            self._unverified[method] += count

    def public_pem(self, version_name: str) -> bytes:
        _key, version = self._version(version_name)
        assert version.private_key is not None
        return version.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # -- helpers -------------------------------------------------------------------------------

    def _take(self, counter: Counter[str], method: str) -> bool:
        with self._lock:
            if counter[method] > 0:
                counter[method] -= 1
                return True
            return False

    def _check_access(self, key_name: str, permission: str, resource: str) -> None:
        if key_name in self.denied:
            raise Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission '{permission}' denied on resource '{resource}' (or it may not exist).",
            )

    def _key(self, name: str, permission: str) -> Key:
        if not _KEY_NAME.fullmatch(name):
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Resource name [{name}] does not represent a valid CryptoKey.",
            )
        self._check_access(name, permission, name)
        key = self.keys.get(name)
        if key is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"CryptoKey {name} not found.")
        return key

    def _version(
        self, name: str, permission: str = "cloudkms.cryptoKeyVersions.get"
    ) -> tuple[Key, Version]:
        found = _VERSION_NAME.fullmatch(name)
        if found is None:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Resource name [{name}] does not represent a valid CryptoKeyVersion.",
            )
        key = self._key(found.group("key"), permission)
        version = key.versions.get(int(found.group("version")))
        if version is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"CryptoKeyVersion {name} not found.")
        return key, version

    @staticmethod
    def _enabled(key: Key, version: Version) -> None:
        if version.state != "ENABLED":
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{key.name}/cryptoKeyVersions/{version.number} is not enabled, current state "
                f"is: {version.state}.",
            )

    @staticmethod
    def _checksum(field_name: str, data: bytes, given: int | None) -> bool:
        """Whether a request checksum was given; INVALID_ARGUMENT if it does not match."""
        if given is None:
            return False
        if int(given) != crc32c(data):
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"The checksum in field {field_name}_crc32c did not match the data in field "
                f"{field_name}.",
            )
        return True

    @staticmethod
    def _flip(data: bytes) -> bytes:
        return bytes([data[0] ^ 0x01]) + data[1:] if data else b"\x01"

    def _record(self, method: str, name: str, aad: bytes = b"") -> None:
        with self._lock:
            self.received.append((method, name, bytes(aad)))

    # -- the service ---------------------------------------------------------------------------

    def encrypt(self, request: kms.EncryptRequest) -> kms.EncryptResponse:
        name = request.name
        plaintext, aad = bytes(request.plaintext), bytes(request.additional_authenticated_data)
        self._record("Encrypt", name, aad)
        if _VERSION_NAME.fullmatch(name):
            key, version = self._version(name, "cloudkms.cryptoKeyVersions.useToEncrypt")
        else:
            key = self._key(name, "cloudkms.cryptoKeyVersions.useToEncrypt")
            if key.purpose != "ENCRYPT_DECRYPT" or key.primary is None:
                raise Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"CryptoKey {name} has purpose {key.purpose}; Encrypt requires a key with "
                    "purpose ENCRYPT_DECRYPT and a primary version.",
                )
            version = key.versions[key.primary]
        if key.purpose != "ENCRYPT_DECRYPT":
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{name} has purpose {key.purpose}; Encrypt requires ENCRYPT_DECRYPT.",
            )
        if len(plaintext) > MAX_DATA or len(aad) > MAX_DATA:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "plaintext or AAD larger than 64 KiB")
        if self._take(self._corrupt_requests, "Encrypt"):
            plaintext = self._flip(plaintext)
        verified_plaintext = self._checksum("plaintext", plaintext, request.plaintext_crc32c)
        verified_aad = self._checksum(
            "additional_authenticated_data", aad, request.additional_authenticated_data_crc32c
        )
        self._enabled(key, version)
        nonce = os.urandom(12)
        header = _MAGIC + key.uid + version.number.to_bytes(4, "big")
        ciphertext = header + nonce + AESGCM(version.secret).encrypt(nonce, plaintext, header + aad)
        ciphertext_crc = crc32c(ciphertext)
        if self._take(self._corrupt_responses, "Encrypt"):
            ciphertext = ciphertext[:-1] + bytes([ciphertext[-1] ^ 0x01])
        if self._take(self._unverified, "Encrypt"):
            verified_plaintext = verified_aad = False
        return kms.EncryptResponse(
            name=f"{key.name}/cryptoKeyVersions/{version.number}",
            ciphertext=ciphertext,
            ciphertext_crc32c=ciphertext_crc,
            verified_plaintext_crc32c=verified_plaintext,
            verified_additional_authenticated_data_crc32c=verified_aad,
            protection_level=kms.ProtectionLevel.SOFTWARE,
        )

    def decrypt(self, request: kms.DecryptRequest) -> kms.DecryptResponse:
        ciphertext, aad = bytes(request.ciphertext), bytes(request.additional_authenticated_data)
        self._record("Decrypt", request.name, aad)
        key = self._key(request.name, "cloudkms.cryptoKeyVersions.useToDecrypt")
        if key.purpose != "ENCRYPT_DECRYPT":
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{key.name} has purpose {key.purpose}; Decrypt requires ENCRYPT_DECRYPT.",
            )
        if self._take(self._corrupt_requests, "Decrypt"):
            ciphertext = self._flip(ciphertext)
        self._checksum("ciphertext", ciphertext, request.ciphertext_crc32c)
        self._checksum(
            "additional_authenticated_data", aad, request.additional_authenticated_data_crc32c
        )
        invalid = Abort(
            grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid."
        )
        header, nonce, sealed = ciphertext[:16], ciphertext[16:28], ciphertext[28:]
        if len(ciphertext) < 28 + 16 or header[:4] != _MAGIC or header[4:12] != key.uid:
            raise invalid
        version = key.versions.get(int.from_bytes(header[12:16], "big"))
        if version is None:
            raise invalid
        self._enabled(key, version)
        try:
            plaintext = AESGCM(version.secret).decrypt(nonce, sealed, header + aad)
        except InvalidTag:
            raise invalid from None
        plaintext_crc = crc32c(plaintext)
        if self._take(self._corrupt_responses, "Decrypt"):
            plaintext = self._flip(plaintext)
        return kms.DecryptResponse(
            plaintext=plaintext,
            plaintext_crc32c=plaintext_crc,
            used_primary=version.number == key.primary,
            protection_level=kms.ProtectionLevel.SOFTWARE,
        )

    def asymmetric_decrypt(
        self, request: kms.AsymmetricDecryptRequest
    ) -> kms.AsymmetricDecryptResponse:
        self._record("AsymmetricDecrypt", request.name)
        key, version = self._version(request.name, "cloudkms.cryptoKeyVersions.useToDecrypt")
        if key.purpose != "ASYMMETRIC_DECRYPT":
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{request.name} has purpose {key.purpose}; AsymmetricDecrypt requires "
                "ASYMMETRIC_DECRYPT.",
            )
        ciphertext = bytes(request.ciphertext)
        if self._take(self._corrupt_requests, "AsymmetricDecrypt"):
            ciphertext = self._flip(ciphertext)
        verified = self._checksum("ciphertext", ciphertext, request.ciphertext_crc32c)
        self._enabled(key, version)
        assert version.private_key is not None
        digest = _HASHES[_RSA.fullmatch(version.algorithm).group(2)]()  # type: ignore[union-attr]
        try:
            plaintext = version.private_key.decrypt(
                ciphertext, padding.OAEP(padding.MGF1(digest), digest, None)
            )
        except ValueError:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Decryption failed: verify that 'name' refers to the correct CryptoKeyVersion.",
            ) from None
        plaintext_crc = crc32c(plaintext)
        if self._take(self._corrupt_responses, "AsymmetricDecrypt"):
            plaintext = self._flip(plaintext)
        if self._take(self._unverified, "AsymmetricDecrypt"):
            verified = False
        return kms.AsymmetricDecryptResponse(
            plaintext=plaintext,
            plaintext_crc32c=plaintext_crc,
            verified_ciphertext_crc32c=verified,
            protection_level=kms.ProtectionLevel.SOFTWARE,
        )

    def get_public_key(self, request: kms.GetPublicKeyRequest) -> kms.PublicKey:
        self._record("GetPublicKey", request.name)
        key, version = self._version(request.name, "cloudkms.cryptoKeyVersions.viewPublicKey")
        if version.private_key is None:
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{request.name} is a {version.algorithm} version, which has no public key.",
            )
        self._enabled(key, version)
        pem = self.public_pem(request.name).decode("ascii")
        pem_crc = crc32c(pem.encode("ascii"))
        if self._take(self._corrupt_responses, "GetPublicKey"):
            pem = pem.replace("A", "B", 1)
        return kms.PublicKey(
            pem=pem,
            pem_crc32c=pem_crc,
            algorithm=kms.CryptoKeyVersion.CryptoKeyVersionAlgorithm[version.algorithm],
            name=request.name,
            protection_level=kms.ProtectionLevel.SOFTWARE,
        )

    def _version_resource(self, key: Key, version: Version) -> kms.CryptoKeyVersion:
        return kms.CryptoKeyVersion(
            name=f"{key.name}/cryptoKeyVersions/{version.number}",
            state=kms.CryptoKeyVersion.CryptoKeyVersionState[version.state],
            algorithm=kms.CryptoKeyVersion.CryptoKeyVersionAlgorithm[version.algorithm],
            protection_level=kms.ProtectionLevel.SOFTWARE,
        )

    def get_crypto_key(self, request: kms.GetCryptoKeyRequest) -> kms.CryptoKey:
        self._record("GetCryptoKey", request.name)
        key = self._key(request.name, "cloudkms.cryptoKeys.get")
        primary = None
        if key.purpose == "ENCRYPT_DECRYPT" and key.primary is not None:
            primary = self._version_resource(key, key.versions[key.primary])
        return kms.CryptoKey(
            name=key.name,
            purpose=kms.CryptoKey.CryptoKeyPurpose[key.purpose],
            primary=primary,
            version_template=kms.CryptoKeyVersionTemplate(
                algorithm=kms.CryptoKeyVersion.CryptoKeyVersionAlgorithm[key.algorithm]
            ),
        )

    def list_crypto_key_versions(
        self, request: kms.ListCryptoKeyVersionsRequest
    ) -> kms.ListCryptoKeyVersionsResponse:
        self._record("ListCryptoKeyVersions", request.parent)
        key = self._key(request.parent, "cloudkms.cryptoKeyVersions.list")
        wanted = None
        if request.filter:
            found = re.fullmatch(r"state\s*[=:]\s*([A-Z_]+)", request.filter.strip())
            if found is None:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter {request.filter!r}")
            wanted = found.group(1)
        versions = [
            self._version_resource(key, v)
            for _, v in sorted(key.versions.items())
            if wanted is None or v.state == wanted
        ]
        start = int(request.page_token or 0)
        size = request.page_size or 2  # small pages, so the client's pager is exercised
        page = versions[start : start + size]
        more = start + size < len(versions)
        return kms.ListCryptoKeyVersionsResponse(
            crypto_key_versions=page,
            next_page_token=str(start + size) if more else "",
            total_size=len(versions),
        )


_REST_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    ("POST", re.compile(r"/v1/(?P<name>.+):encrypt"), "Encrypt", "name"),
    ("POST", re.compile(r"/v1/(?P<name>.+):decrypt"), "Decrypt", "name"),
    ("POST", re.compile(r"/v1/(?P<name>.+):asymmetricDecrypt"), "AsymmetricDecrypt", "name"),
    ("GET", re.compile(r"/v1/(?P<name>.+)/publicKey"), "GetPublicKey", "name"),
    ("GET", re.compile(r"/v1/(?P<name>.+)/cryptoKeyVersions"), "ListCryptoKeyVersions", "parent"),
    ("GET", re.compile(r"/v1/(?P<name>.+)"), "GetCryptoKey", "name"),
]


def _route(verb: str, path: str) -> tuple[str, str, str] | None:
    """(method, the request field the path names, its value) for a REST request."""
    for method_verb, pattern, method, name_field in _REST_ROUTES:
        found = pattern.fullmatch(path)
        if method_verb == verb and found is not None:
            return method, name_field, found.group("name")
    return None


_QUERY_FIELDS = {"pageSize": "page_size", "pageToken": "page_token", "filter": "filter"}


class _RestHandler(BaseHTTPRequestHandler):
    """The REST (HTTP/1.1 + JSON) mapping of the same methods."""

    kms: KmsEmulator
    require_auth = False

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, verb: str) -> None:
        parts = urlsplit(self.path)
        route = _route(verb, unquote(parts.path))
        if route is None:
            error = {"code": 404, "message": "no such method", "status": "NOT_FOUND"}
            self._send(404, {"error": error})
            return
        method, name_field, name = route
        request_type, response_type, _ = self.kms._methods()[method]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b"{}"
        try:
            request = request_type.from_json(body or b"{}", ignore_unknown_fields=True)
        except Exception as exc:
            self._send(
                400, {"error": {"code": 400, "message": str(exc), "status": "INVALID_ARGUMENT"}}
            )
            return
        setattr(request, name_field, name)
        for query, value in parse_qs(parts.query).items():
            if query in _QUERY_FIELDS:
                target = _QUERY_FIELDS[query]
                setattr(request, target, int(value[0]) if target == "page_size" else value[0])
        try:
            if self.require_auth:
                self.kms.authenticate(self.headers.get("Authorization"))
            response = self.kms.dispatch(method, request)
        except Abort as abort:
            status = _HTTP.get(abort.code, 500)
            error = {"code": status, "message": abort.message, "status": abort.code.name}
            self._send(status, {"error": error})
            return
        self._send(200, json.loads(response_type.to_json(response)))

    def _send(self, status: int, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
