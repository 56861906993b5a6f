"""The encryption context reaches AWS KMS as its EncryptionContext, from the engine down.

The provider talks to moto through the fault-injecting front end (which only records and
forwards here), so the tests see the Encrypt and Decrypt requests KMS received. A plain boto3
client then decrypts the envelope's recipient itself: KMS opens it under the envelope's context
and refuses it under any other -- the binding is done by the service, not only by the
envelope's header MAC.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from aws_testing import CONTEXT, REGION
from botocore.exceptions import ClientError

from kmsenvelope import Config, Engine, ProviderError, ProviderRegistry
from kmsenvelope_aws import AwsKmsKey, ClientCache

OTHER = {**CONTEXT, "tenant": "t-2"}


@pytest.fixture
def front_settings(fault_kms: Any) -> dict[str, Any]:
    return {"endpoint_url": fault_kms.url, "backoff_base": 0.01, "backoff_max": 0.05}


def _requests(fault_kms: Any, operation: str) -> list[dict[str, Any]]:
    return [body for op, body in fault_kms.requests if op == operation]


def _kms_decrypt(moto_url: str, stanza: Any, context: dict[str, str]) -> bytes:
    """KMS Decrypt of a recipient's ciphertext with a plain boto3 client (not the provider)."""
    client = boto3.client("kms", region_name=REGION, endpoint_url=moto_url)
    request: dict[str, Any] = {
        "CiphertextBlob": stanza.ciphertext,
        "KeyId": stanza.key_id.removeprefix("aws-kms:"),
    }
    if context:
        request["EncryptionContext"] = context
    return bytes(client.decrypt(**request)["Plaintext"])


def test_engine_sends_the_context_to_kms_and_kms_binds_it(
    make_key, registry: ProviderRegistry, front_settings, fault_kms, moto_url
):
    arn = make_key()["Arn"]
    engine = Engine(registry=registry, config=Config(providers={"aws-kms": front_settings}))
    blob = engine.encrypt(b"context at the service", [f"aws-kms:{arn}"], CONTEXT)

    (encrypt,) = _requests(fault_kms, "Encrypt")
    assert encrypt["EncryptionContext"] == CONTEXT

    (stanza,) = engine.inspect(blob).recipients
    assert stanza.algorithm == "SYMMETRIC_DEFAULT"
    dek = _kms_decrypt(moto_url, stanza, CONTEXT)
    assert len(dek) == 32
    for other in ({}, OTHER):
        with pytest.raises(ClientError) as info:
            _kms_decrypt(moto_url, stanza, other)
        assert info.value.response["Error"]["Code"] == "InvalidCiphertextException"

    # A fresh provider KEK: the right context opens the recipient, another is refused by KMS.
    def fresh() -> AwsKmsKey:
        return AwsKmsKey(stanza.key_id, front_settings, clients=ClientCache())

    assert fresh().unwrap(stanza, CONTEXT) == dek
    for other in ({}, OTHER):
        before = len(_requests(fault_kms, "Decrypt"))
        with pytest.raises(ProviderError) as refused:
            fresh().unwrap(stanza, other)
        assert "InvalidCiphertextException" in str(refused.value)
        sent = _requests(fault_kms, "Decrypt")[before:]
        assert [body.get("EncryptionContext", {}) for body in sent] == [other]


def test_engine_decrypt_sends_the_envelope_context(
    make_key, registry: ProviderRegistry, front_settings, fault_kms
):
    arn = make_key()["Arn"]
    config = Config(providers={"aws-kms": front_settings})
    blob = Engine(registry=registry, config=config).encrypt(b"x", [f"aws-kms:{arn}"], CONTEXT)
    reader = Engine(registry=registry, config=config, allow=[f"aws-kms:{arn}"])
    assert reader.decrypt(blob, CONTEXT) == b"x"
    decrypts = _requests(fault_kms, "Decrypt")
    assert decrypts
    assert all(body["EncryptionContext"] == CONTEXT for body in decrypts)
