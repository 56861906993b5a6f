"""Strict by default with AWS KMS: a named alias vouches for the key it resolves to; a key ARN
that only the envelope names (another account, another key) causes no KMS request at all."""

from __future__ import annotations

from typing import Any

import pytest
from aws_testing import FaultInjectingKms, unique_alias

import kmsenvelope
from kmsenvelope import Config, Engine, NoRecipientError, ProviderRegistry


def _engine(
    registry: ProviderRegistry, url: str, *, recipients: tuple[str, ...] = (), **extra: Any
) -> Engine:
    table = {"endpoint_url": url, "backoff_base": 0.01, "backoff_max": 0.05}
    config = Config(providers={"aws-kms": table}, recipients=recipients)
    return Engine(registry=registry, config=config, **extra)


def test_alias_in_recipients_opens_what_it_wrapped(
    registry: ProviderRegistry, make_key: Any, fault_kms: FaultInjectingKms
) -> None:
    alias = unique_alias()
    meta = make_key(alias=alias)
    uri = f"aws-kms:{alias}"
    blob = _engine(registry, fault_kms.url).encrypt(b"aliased", [uri], {"app": "t"})
    recorded = kmsenvelope.inspect_envelope(blob).recipients[0].key_id
    assert recorded == f"aws-kms:{meta['Arn']}"  # the alias is recorded as its key ARN
    reader = _engine(registry, fault_kms.url, recipients=(uri,))
    assert reader.decrypt(blob) == b"aliased"
    # Named by its ARN on the command line (trusted_keys) works the same.
    by_arn = _engine(registry, fault_kms.url, trusted_keys=[recorded])
    assert by_arn.decrypt(blob) == b"aliased"


def test_a_foreign_key_is_not_contacted(
    registry: ProviderRegistry, make_key: Any, fault_kms: FaultInjectingKms
) -> None:
    alias = unique_alias()
    mine = make_key(alias=alias)
    theirs = make_key()
    blob = _engine(registry, fault_kms.url).encrypt(b"theirs", [f"aws-kms:{theirs['Arn']}"])
    fault_kms.requests.clear()
    reader = _engine(registry, fault_kms.url, recipients=(f"aws-kms:{alias}",))
    with pytest.raises(NoRecipientError) as info:
        reader.decrypt(blob)
    assert fault_kms.count("Decrypt") == 0
    # The only request allowed is about the user's own alias (to see what it names).
    for _op, body in fault_kms.requests:
        assert theirs["KeyId"] not in str(body)
    assert "not a key you named" in str(info.value)
    assert mine["Arn"] not in str(info.value)
