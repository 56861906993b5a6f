"""Key types and wrap algorithms, the AES-GCM stanza layout, and the one operation done locally:
RSA wrap with a public key.

Symmetric (``oct``/``oct-HSM``) keys never leave the HSM, so everything done with them goes to
the service. (The SDK's ``CryptographyClient`` would "wrap locally" with a random in-memory key
for an ``oct`` key whose material it cannot read; this provider never hands it such a key.)

``A256GCM`` (the default for oct-HSM keys) is Managed HSM's ``encrypt``/``decrypt`` with the
envelope's encryption context as AAD, so the service itself refuses another context. The stanza
keeps the service's IV and tag around the ciphertext: ``iv (12) || ciphertext || tag (16)``, with
``params = {"aad": "context-v1"}`` naming the AAD construction of :func:`context_aad`.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kmsenvelope.format.header import encode_context

__all__ = [
    "AAD_LABEL",
    "DEFAULT_OCT_ALGORITHM",
    "DEFAULT_RSA_ALGORITHM",
    "GCM_ALGORITHMS",
    "GCM_IV_SIZE",
    "GCM_TAG_SIZE",
    "KEY_WRAP_ALGORITHMS",
    "OCT_ALGORITHMS",
    "OCT_KEY_TYPES",
    "RSA_1_5",
    "RSA_ALGORITHMS",
    "RSA_KEY_TYPES",
    "context_aad",
    "rsa_public_key",
    "rsa_wrap",
]

RSA_KEY_TYPES = frozenset({"RSA", "RSA-HSM"})
OCT_KEY_TYPES = frozenset({"OCT", "OCT-HSM"})

RSA_OAEP_256 = "RSA-OAEP-256"
RSA_OAEP = "RSA-OAEP"
RSA_1_5 = "RSA1_5"
RSA_ALGORITHMS = frozenset({RSA_OAEP_256, RSA_OAEP, RSA_1_5})
DEFAULT_RSA_ALGORITHM = RSA_OAEP_256

A256KW = "A256KW"
A256GCM = "A256GCM"
KEY_WRAP_ALGORITHMS = frozenset(
    {A256KW, "A192KW", "A128KW", "CKM_AES_KEY_WRAP", "CKM_AES_KEY_WRAP_PAD"}
)
"""Symmetric algorithms of the service's wrapKey/unwrapKey: no AAD, the context is not bound."""
GCM_ALGORITHMS = frozenset({A256GCM, "A192GCM", "A128GCM"})
"""Symmetric algorithms of the service's encrypt/decrypt that bind the context as AAD."""
OCT_ALGORITHMS = KEY_WRAP_ALGORITHMS | GCM_ALGORITHMS
DEFAULT_OCT_ALGORITHM = A256GCM

GCM_IV_SIZE = 12
GCM_TAG_SIZE = 16
AAD_LABEL = "context-v1"
"""``params["aad"]`` of a GCM stanza: the AAD is :func:`context_aad` (change it, change this)."""
_AAD_PREFIX = b"kmsenvelope-azure-kv/v1\x00"


def context_aad(context: Mapping[str, str]) -> bytes:
    """The AAD sent with A*GCM: a fixed label, then the canonical context (format spec 5.4)."""
    return _AAD_PREFIX + encode_context(context)


def rsa_public_key(n: bytes, e: bytes) -> rsa.RSAPublicKey:
    """The RSA public key with modulus ``n`` and exponent ``e`` (big-endian bytes, as in a JWK)."""
    return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()


def _padding(algorithm: str) -> padding.AsymmetricPadding:
    if algorithm == RSA_OAEP_256:
        sha256 = hashes.SHA256()
        return padding.OAEP(mgf=padding.MGF1(sha256), algorithm=sha256, label=None)
    if algorithm == RSA_OAEP:
        # SHA-1 inside OAEP is Key Vault's "RSA-OAEP"; it is not used as a signature hash.
        sha1 = hashes.SHA1()  # noqa: S303
        return padding.OAEP(mgf=padding.MGF1(sha1), algorithm=sha1, label=None)
    if algorithm == RSA_1_5:
        return padding.PKCS1v15()
    raise ValueError(f"not an RSA wrap algorithm: {algorithm!r}")


def rsa_wrap(public_key: rsa.RSAPublicKey, algorithm: str, dek: bytes) -> bytes:
    """Wrap ``dek`` exactly as Key Vault's ``wrapKey`` would with ``algorithm``."""
    return public_key.encrypt(dek, _padding(algorithm))
