"""The three ways a PKCS#11 key wraps a data key, and the constants they need.

* ``AES-<bits>-GCM`` -- ``CKM_AES_GCM`` through ``C_Encrypt``/``C_Decrypt``, 96-bit IV, 128-bit
  tag, the envelope's context as AAD. Blob: ``IV (12) || ciphertext || tag (16)``.
* ``AES-KWP`` -- AES key wrap with padding (RFC 5649) through ``C_WrapKey``/``C_UnwrapKey`` on
  a short-lived session object holding the data key. The CKM_* constant is a setting because
  HSMs disagree: SoftHSM2 implements RFC 5649 as ``CKM_AES_KEY_WRAP_PAD`` (0x210A), PKCS#11
  3.0 calls it ``CKM_AES_KEY_WRAP_KWP`` (0x210B), and AWS CloudHSM (Client SDK 5) as the vendor
  mechanism ``CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD`` (0x8000216F) -- its 0x210A is PKCS#5 padding.
* ``RSA-OAEP-<HASH>`` -- ``CKM_RSA_PKCS_OAEP`` with MGF1 over the same hash, no label. SoftHSM2
  only does SHA-1.

Every function here calls into python-pkcs11 and must run with ``pool.LOCK`` held.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kmsenvelope.errors import ProviderError, UnwrapError
from kmsenvelope.format.header import encode_context

from . import _p11

__all__ = [
    "AAD_LABEL",
    "GCM_IV_SIZE",
    "GCM_TAG_SIZE",
    "KWP_MECHANISMS",
    "OAEP_HASHES",
    "gcm_algorithm",
    "gcm_unwrap",
    "gcm_wrap",
    "is_kwp_mechanism",
    "kwp_unwrap",
    "kwp_wrap",
    "oaep_algorithm",
    "rsa_unwrap",
    "rsa_wrap",
]

GCM_IV_SIZE = 12
GCM_TAG_SIZE = 16
AAD_LABEL = "context-v1"
_AAD_PREFIX = b"kmsenvelope-pkcs11/v1\x00"

KWP = "AES-KWP"
VENDOR_DEFINED = 0x80000000
KWP_MECHANISMS: Mapping[str, int] = {
    "CKM_AES_KEY_WRAP_PAD": 0x210A,
    "CKM_AES_KEY_WRAP_KWP": 0x210B,
    "CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD": 0x8000216F,
}
_STANDARD_KWP = frozenset({0x210A, 0x210B, 0x1091})  # 0x1091: pre-2016 value of ..._WRAP_PAD

# name -> (CKM_ hash, CKG_MGF1_ constant, algorithm suffix)
OAEP_HASHES: Mapping[str, tuple[int, int, str]] = {
    "sha1": (0x0220, 0x1, "SHA1"),
    "sha224": (0x0255, 0x5, "SHA224"),
    "sha256": (0x0250, 0x2, "SHA256"),
    "sha384": (0x0260, 0x3, "SHA384"),
    "sha512": (0x0270, 0x4, "SHA512"),
}
_OAEP_BY_ALGORITHM = {f"RSA-OAEP-{suffix}": name for name, (_, _, suffix) in OAEP_HASHES.items()}


def is_kwp_mechanism(value: int) -> bool:
    """Whether ``value`` may be used as the AES key-wrap-with-padding mechanism."""
    return value in _STANDARD_KWP or VENDOR_DEFINED <= value <= 0xFFFFFFFF


def context_aad(context: Mapping[str, str]) -> bytes:
    """The AAD bound by AES-GCM: a fixed label and the canonical context encoding."""
    return _AAD_PREFIX + encode_context(context)


def gcm_algorithm(key_bits: int) -> str:
    """``AES-256-GCM`` for a 256-bit key."""
    return f"AES-{key_bits}-GCM"


def oaep_algorithm(hash_name: str) -> str:
    """``RSA-OAEP-SHA256`` for ``sha256``."""
    return f"RSA-OAEP-{OAEP_HASHES[hash_name][2]}"


def oaep_hash_of(algorithm: str) -> str | None:
    """``sha1`` for ``RSA-OAEP-SHA1``; None if the algorithm is not RSA-OAEP."""
    return _OAEP_BY_ALGORITHM.get(algorithm)


# -- AES-GCM ---------------------------------------------------------------------------------


def gcm_wrap(
    key: Any, dek: bytes, context: Mapping[str, str], iv_mode: str, iv_setting: str
) -> bytes:
    """Encrypt ``dek`` under ``key`` with AES-GCM; return ``IV || ciphertext || tag``.

    ``iv_mode`` "host": a random IV from the host; "hsm": the HSM chooses it and writes it
    back (AWS CloudHSM). ``iv_setting`` names the setting in the error if that fails.
    """
    aad = context_aad(context)
    if iv_mode == "hsm":
        # The HSM writes the IV it chose into the buffer pIV points at (CloudHSM does; it
        # rejects IVs from the application). python-pkcs11 hands our buffer over as is.
        iv_buffer = bytearray(GCM_IV_SIZE)
        sealed = key.encrypt(
            dek,
            mechanism=_p11.Mechanism.AES_GCM,
            mechanism_param=_p11.GCMParams(iv_buffer, aad, GCM_TAG_SIZE * 8),
        )
        iv = bytes(iv_buffer)
        if iv == bytes(GCM_IV_SIZE):
            raise ProviderError(
                "the PKCS#11 module did not return the AES-GCM IV it generated (it used ours); "
                f'set {iv_setting} = "host" for this HSM'
            )
    else:
        iv = os.urandom(GCM_IV_SIZE)
        sealed = key.encrypt(
            dek,
            mechanism=_p11.Mechanism.AES_GCM,
            mechanism_param=_p11.GCMParams(iv, aad, GCM_TAG_SIZE * 8),
        )
    return iv + bytes(sealed)


def gcm_unwrap(key: Any, blob: bytes, context: Mapping[str, str]) -> bytes:
    """Decrypt ``IV || ciphertext || tag``; the caller maps a failure to ``UnwrapError``."""
    if len(blob) < GCM_IV_SIZE + GCM_TAG_SIZE:
        raise UnwrapError("wrapped key is too short for AES-GCM")
    iv, sealed = blob[:GCM_IV_SIZE], blob[GCM_IV_SIZE:]
    return bytes(
        key.decrypt(
            sealed,
            mechanism=_p11.Mechanism.AES_GCM,
            mechanism_param=_p11.GCMParams(iv, context_aad(context), GCM_TAG_SIZE * 8),
        )
    )


# -- AES key wrap with padding -----------------------------------------------------------------

_A = _p11.Attribute


def kwp_wrap(session: Any, key: Any, dek: bytes, mechanism: int) -> bytes:
    """Wrap ``dek`` with RFC 5649 by loading it as a session object and ``C_WrapKey``-ing it."""
    temp = session.create_object(
        {
            _A.CLASS: _p11.ObjectClass.SECRET_KEY,
            _A.KEY_TYPE: _p11.KeyType.GENERIC_SECRET,
            _A.TOKEN: False,
            _A.PRIVATE: True,
            _A.SENSITIVE: False,
            _A.EXTRACTABLE: True,
            _A.VALUE: dek,
        }
    )
    try:
        return bytes(key.wrap_key(temp, mechanism=_p11.mechanism(mechanism)))
    finally:
        temp.destroy()


def kwp_unwrap(key: Any, blob: bytes, mechanism: int) -> bytes:
    """``C_UnwrapKey`` into a non-sensitive session object, read its value, destroy it."""
    temp = key.unwrap_key(
        _p11.ObjectClass.SECRET_KEY,
        _p11.KeyType.GENERIC_SECRET,
        blob,
        mechanism=_p11.mechanism(mechanism),
        capabilities=0,
        template={_A.TOKEN: False, _A.PRIVATE: True, _A.SENSITIVE: False, _A.EXTRACTABLE: True},
    )
    try:
        try:
            return bytes(temp[_A.VALUE])
        except _p11.exc.AttributeSensitive:
            raise ProviderError(
                "this HSM keeps unwrapped keys sensitive, so AES-KWP cannot hand back the data "
                'key; use aes_mechanism = "gcm"'
            ) from None
    finally:
        temp.destroy()


# -- RSA-OAEP ------------------------------------------------------------------------------------


def _oaep_params(hash_name: str) -> tuple[Any, Any, None]:
    ckm, mgf, _ = OAEP_HASHES[hash_name]
    return (_p11.mechanism(ckm), _p11.MGF(mgf), None)


def rsa_wrap(public_key: Any, dek: bytes, hash_name: str) -> bytes:
    """RSA-OAEP-encrypt ``dek`` with the token's public key."""
    return bytes(
        public_key.encrypt(
            dek, mechanism=_p11.Mechanism.RSA_PKCS_OAEP, mechanism_param=_oaep_params(hash_name)
        )
    )


def rsa_unwrap(private_key: Any, blob: bytes, hash_name: str) -> bytes:
    """RSA-OAEP-decrypt ``blob`` with the token's private key."""
    return bytes(
        private_key.decrypt(
            blob, mechanism=_p11.Mechanism.RSA_PKCS_OAEP, mechanism_param=_oaep_params(hash_name)
        )
    )
