"""The encryption context reaches the token as the AES-GCM AAD, from the engine down.

An envelope is encrypted through the engine; its recipient is then decrypted by the token
itself, with python-pkcs11 and no provider code, using the AAD documented in
docs/providers/pkcs11.md (``"kmsenvelope-pkcs11/v1" 0x00`` + the canonical context encoding):
the token opens it under the envelope's context and refuses any other. So the context is bound
by the HSM, not only by the envelope's header MAC.
"""

from __future__ import annotations

import pkcs11
import pytest
from pkcs11 import Mechanism, ObjectClass
from pkcs11.exceptions import PKCS11Error
from pkcs11.mechanisms import GCMParams

from kmsenvelope import Config, Engine, ProviderError, ProviderRegistry
from kmsenvelope.format.header import encode_context
from kmsenvelope_pkcs11 import close_all, open_key, plugin

CONTEXT = {"app": "billing", "record": "42"}
OTHER = {"app": "billing", "record": "43"}
KEY_URI = "pkcs11:token=kmsenv-test;object=aes-wrap"


def _aad(context: dict[str, str]) -> bytes:
    return b"kmsenvelope-pkcs11/v1\x00" + encode_context(context)


def _token_decrypt(softhsm, label: str, blob: bytes, context: dict[str, str]) -> bytes:
    """C_Decrypt (CKM_AES_GCM) of ``IV || ciphertext || tag`` by the token, without the provider."""
    close_all()  # the provider lets go of the module; we load it ourselves
    lib = pkcs11.lib(softhsm.module)
    try:
        token = lib.get_token(token_label=softhsm.token)
        with token.open(user_pin=softhsm.pin) as session:
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
            params = GCMParams(blob[:12], _aad(context), 128)
            return bytes(
                key.decrypt(blob[12:], mechanism=Mechanism.AES_GCM, mechanism_param=params)
            )
    finally:
        lib.finalize()  # so the next test's SoftHSM2 re-reads its own configuration


def test_engine_context_is_the_tokens_gcm_aad(softhsm, aes_uri):
    registry = ProviderRegistry()
    registry.add_plugin(plugin, name="pkcs11")
    settings = softhsm.settings()
    engine = Engine(registry=registry, config=Config(providers={"pkcs11": settings}))
    blob = engine.encrypt(b"context at the token", [KEY_URI], CONTEXT)
    (stanza,) = engine.inspect(blob).recipients
    assert stanza.algorithm == "AES-256-GCM"

    dek = _token_decrypt(softhsm, "aes-wrap", stanza.ciphertext, CONTEXT)
    assert len(dek) == 32
    for other in ({}, OTHER):
        with pytest.raises(PKCS11Error):
            _token_decrypt(softhsm, "aes-wrap", stanza.ciphertext, other)

    # A fresh provider KEK: the right context opens the recipient, another is refused.
    assert open_key(stanza.key_id, settings).unwrap(stanza, CONTEXT) == dek
    for other in ({}, OTHER):
        with pytest.raises(ProviderError):
            open_key(stanza.key_id, settings).unwrap(stanza, other)
