"""Round trips, rotation and context binding through kmsenvelope.Engine and the real Azure SDK."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure_kv_cloud import Cloud, MakeEngine, unique, uri_of
from cryptography.hazmat.primitives import keywrap

import kmsenvelope
import kmsenvelope.local.plugin
import kmsenvelope_azure.plugin
from kmsenvelope import (
    AuthenticationError,
    Config,
    DecryptionError,
    NoRecipientError,
    ProviderRegistry,
    WrappedKey,
)
from kmsenvelope.errors import UnwrapError
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope_azure.provider import AzureKeyVaultProvider

CONTEXT = {"app": "billing", "tenant": "t-1"}


def test_rsa_round_trip_unwrapped_by_a_fresh_provider(
    cloud: Cloud, rsa_key: KeyVaultKey, make_engine: MakeEngine
) -> None:
    engine = make_engine()
    blob = engine.encrypt(b"rsa payload " * 100, [uri_of(rsa_key)], CONTEXT)

    [recipient] = engine.inspect(blob).recipients
    assert recipient.provider == "azure-kv"
    assert recipient.key_id == f"azure-kv:{rsa_key.id}"  # the full versioned kid
    assert recipient.algorithm == "RSA-OAEP-256"
    # RSA wraps locally with the public key: the service saw no wrapKey call.
    assert cloud.vault.count("wrapkey", rsa_key.name) == 0

    assert make_engine(fresh=True).decrypt(blob, CONTEXT) == b"rsa payload " * 100
    assert cloud.vault.count("unwrapkey", rsa_key.name, status=200) == 1


def test_oct_hsm_round_trip_wraps_and_unwraps_in_the_service(
    cloud: Cloud, oct_key: KeyVaultKey, make_engine: MakeEngine
) -> None:
    engine = make_engine(oct_algorithm="A256KW")  # A256GCM: see test_azure_gcm.py
    blob = engine.encrypt(b"hsm payload", [uri_of(oct_key)], CONTEXT)

    [recipient] = engine.inspect(blob).recipients
    assert recipient.key_id == f"azure-kv:{oct_key.id}"
    assert recipient.algorithm == "A256KW"
    # The wrap was done by the HSM (never the SDK's local oct path with a random key): the
    # ciphertext opens with the HSM's own key material.
    assert cloud.hsm.count("wrapkey", oct_key.name, status=200) == 1
    hsm_secret = cloud.hsm.latest(oct_key.name).secret
    assert hsm_secret is not None
    assert len(keywrap.aes_key_unwrap(hsm_secret, recipient.ciphertext)) == 32

    assert make_engine(fresh=True).decrypt(blob, CONTEXT) == b"hsm payload"
    assert cloud.hsm.count("unwrapkey", oct_key.name, status=200) == 1


def test_oct_hsm_key_wrap_with_padding(
    cloud: Cloud, oct_key: KeyVaultKey, make_engine: MakeEngine
) -> None:
    engine = make_engine(oct_algorithm="CKM_AES_KEY_WRAP_PAD")
    blob = engine.encrypt(b"padded", [uri_of(oct_key)], CONTEXT)
    assert engine.inspect(blob).recipients[0].algorithm == "CKM_AES_KEY_WRAP_PAD"
    # Unwrap uses the algorithm recorded in the envelope, whatever the reader's settings say.
    assert make_engine(fresh=True).decrypt(blob, CONTEXT) == b"padded"


@pytest.mark.parametrize("algorithm", ["RSA-OAEP-256", "RSA-OAEP"])
@pytest.mark.parametrize("wrap_locally", [True, False])
def test_rsa_algorithms_wrapped_locally_or_by_the_service(
    algorithm: str,
    wrap_locally: bool,
    cloud: Cloud,
    rsa_key: KeyVaultKey,
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(algorithm=algorithm, wrap_locally=wrap_locally)
    blob = engine.encrypt(b"rsa", [uri_of(rsa_key)], CONTEXT)
    assert engine.inspect(blob).recipients[0].algorithm == algorithm
    assert cloud.vault.count("wrapkey", rsa_key.name, status=200) == (0 if wrap_locally else 1)
    assert make_engine(fresh=True).decrypt(blob, CONTEXT) == b"rsa"


def test_managed_hsm_rsa_hsm_key(
    cloud: Cloud, hsm_admin: KeyClient, make_engine: MakeEngine
) -> None:
    key = hsm_admin.create_rsa_key(unique("rsa-hsm"), size=2048, hardware_protected=True)
    assert key.key_type == "RSA-HSM"
    blob = make_engine().encrypt(b"rsa-hsm", [uri_of(key)], CONTEXT)
    assert make_engine(fresh=True).decrypt(blob, CONTEXT) == b"rsa-hsm"


@pytest.mark.parametrize("kind", ["rsa", "oct"])
def test_rotation_old_envelopes_open_and_new_ones_use_the_new_version(
    kind: str,
    cloud: Cloud,
    vault_admin: KeyClient,
    hsm_admin: KeyClient,
    make_engine: MakeEngine,
) -> None:
    admin = vault_admin if kind == "rsa" else hsm_admin
    key = (
        admin.create_rsa_key(unique("rot"), size=2048)
        if kind == "rsa"
        else admin.create_oct_key(unique("rot"), size=256, hardware_protected=True)
    )
    engine = make_engine(key_cache_ttl=0)  # resolve the current version on every wrap
    before = engine.encrypt(b"before rotation", [uri_of(key)], CONTEXT)

    rotated = admin.rotate_key(key.name)
    assert rotated.properties.version != key.properties.version
    after = engine.encrypt(b"after rotation", [uri_of(key)], CONTEXT)

    assert engine.inspect(before).recipients[0].key_id == f"azure-kv:{key.id}"
    assert engine.inspect(after).recipients[0].key_id == f"azure-kv:{rotated.id}"
    reader = make_engine(fresh=True)
    assert reader.decrypt(before, CONTEXT) == b"before rotation"
    assert reader.decrypt(after, CONTEXT) == b"after rotation"


def test_versionless_resolution_is_cached_for_key_cache_ttl(
    cloud: Cloud, vault_admin: KeyClient, rsa_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    kek = provider(uri_of(rsa_key), cloud.settings(key_cache_ttl=0.5))
    first = kek.wrap(os.urandom(32), {})
    gets = cloud.vault.count("get", rsa_key.name)
    rotated = vault_admin.rotate_key(rsa_key.name)

    cached = kek.wrap(os.urandom(32), {})
    assert cached.key_id == first.key_id  # still within the TTL: no new get
    assert cloud.vault.count("get", rsa_key.name) == gets

    time.sleep(0.6)
    fresh = kek.wrap(os.urandom(32), {})
    assert fresh.key_id == f"azure-kv:{rotated.id}"
    assert cloud.vault.count("get", rsa_key.name) == gets + 1


def test_versioned_uri_pins_that_version(
    cloud: Cloud, vault_admin: KeyClient, rsa_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    pinned = provider(uri_of(rsa_key, versioned=True), cloud.settings(key_cache_ttl=0))
    assert pinned.key_id == f"azure-kv:{rsa_key.id}"
    vault_admin.rotate_key(rsa_key.name)
    wrapped = pinned.wrap(os.urandom(32), {})
    assert wrapped.key_id == f"azure-kv:{rsa_key.id}"

    latest = provider(uri_of(rsa_key), cloud.settings(key_cache_ttl=0))
    newer = latest.wrap(os.urandom(32), {})
    assert newer.key_id != wrapped.key_id
    calls = cloud.vault.count("unwrapkey", rsa_key.name)
    with pytest.raises(UnwrapError, match="another version"):
        pinned.unwrap(newer, {})
    assert cloud.vault.count("unwrapkey", rsa_key.name) == calls  # refused without a call


def test_unwrap_refuses_a_recipient_of_another_key_without_calling_the_service(
    cloud: Cloud, oct_key: KeyVaultKey, hsm_admin: KeyClient, provider: AzureKeyVaultProvider
) -> None:
    other = hsm_admin.create_oct_key(unique("other"), size=256, hardware_protected=True)
    wrapped = provider(uri_of(other), cloud.settings()).wrap(os.urandom(32), {})
    kek = provider(uri_of(oct_key), cloud.settings())
    with pytest.raises(UnwrapError, match="another key"):
        kek.unwrap(wrapped, {})
    assert cloud.hsm.count("unwrapkey", oct_key.name) == 0
    foreign = WrappedKey("aws-kms", "aws-kms:alias/x", "SYMMETRIC_DEFAULT", b"x" * 40)
    with pytest.raises(UnwrapError, match="cannot unwrap"):
        kek.unwrap(foreign, {})
    odd_id = WrappedKey("azure-kv", "azure-kv:not-a-url", "A256KW", b"x" * 40)
    with pytest.raises(UnwrapError, match="not an azure-kv URI"):
        kek.unwrap(odd_id, {})
    versionless = WrappedKey("azure-kv", kek.key_id, "A256KW", b"x" * 40)
    with pytest.raises(UnwrapError, match="has no version"):
        kek.unwrap(versionless, {})


@pytest.mark.parametrize("kind", ["rsa", "oct"])
def test_changed_context_is_rejected_by_the_envelope(
    kind: str,
    rsa_key: KeyVaultKey,
    oct_key: KeyVaultKey,
    make_engine: MakeEngine,
    provider: AzureKeyVaultProvider,
    cloud: Cloud,
) -> None:
    key = rsa_key if kind == "rsa" else oct_key
    # Algorithms without AAD (A256GCM binds the context in the HSM: test_azure_context.py).
    engine = make_engine(**({"oct_algorithm": "A256KW"} if kind == "oct" else {}))
    blob = engine.encrypt(b"bound to its context", [uri_of(key)], CONTEXT)

    # Key Vault's wrapKey has no AAD: the KEK itself unwraps under any context ...
    recipient = engine.inspect(blob).recipients[0]
    kek = provider(recipient.key_id, cloud.settings())
    assert len(kek.unwrap(recipient, {"tenant": "t-2"})) == 32
    # ... and the envelope's header MAC is what rejects a changed context.
    with pytest.raises(AuthenticationError):
        make_engine(fresh=True).decrypt(blob, {**CONTEXT, "tenant": "t-2"})
    tampered = blob.replace(b"t-1", b"t-2", 1)
    assert tampered != blob
    with pytest.raises(DecryptionError):
        make_engine(fresh=True).decrypt(tampered)
    assert make_engine(fresh=True).decrypt(blob, CONTEXT) == b"bound to its context"


def test_envelope_for_azure_and_local_opens_with_either_while_the_other_is_down(
    cloud: Cloud, keystore: Any, keystore_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keystore.create_key("payments")
    vault = cloud.start_vault()  # a vault of its own, so it can be taken down

    def engine(**azure: Any) -> kmsenvelope.Engine:
        registry = ProviderRegistry()
        registry.add_plugin(kmsenvelope.local.plugin, name="local")
        registry.register(kmsenvelope_azure.SCHEME, AzureKeyVaultProvider(), plugin="azure")
        providers = {"azure-kv": cloud.settings(**azure), "local": {"keystore": str(keystore_dir)}}
        return kmsenvelope.Engine(
            registry=registry, config=Config(providers=providers), trusted_keys=[uri_of(key)]
        )

    key = cloud.admin(vault).create_rsa_key(unique("multi"), size=2048)  # the user's own key
    try:
        blob = engine().encrypt(b"two recipients", [uri_of(key), "local:payments"], CONTEXT)
        recipients = engine().inspect(blob).recipients
        assert [r.provider for r in recipients] == ["azure-kv", "local"]

        # Azure down (stopped, connections cut): the local HSM opens it.
        vault.stop()
        started = time.monotonic()
        assert engine(retry_total=1).decrypt(blob, CONTEXT) == b"two recipients"
        assert time.monotonic() - started < 10

        # Both down: the error lists each recipient and why it failed.
        monkeypatch.delenv("KMSENVELOPE_KEYSTORE_PASSPHRASE")
        with pytest.raises(NoRecipientError) as info:
            engine(retry_total=0).decrypt(blob, CONTEXT)
        reasons = [a.reason for a in info.value.attempts]
        assert "unreachable" in reasons[0]
        assert "passphrase" in reasons[1]

        # Local unavailable (no passphrase), Azure back: Azure opens it.
        vault.start(port=vault.port)  # same address, same keys
        assert engine().decrypt(blob, CONTEXT) == b"two recipients"
    finally:
        vault.stop()


def test_envelope_for_azure_and_an_in_memory_kek(cloud: Cloud, make_engine: MakeEngine) -> None:
    vault = cloud.start_vault()
    try:
        key = cloud.admin(vault).create_rsa_key(unique("mem"), size=2048)
        other = InMemoryKEK.generate("second")
        blob = make_engine(keys=(other,)).encrypt(b"two", [uri_of(key), other], CONTEXT)
        # The in-memory KEK is unavailable (not supplied): Azure opens it ...
        assert make_engine(fresh=True).decrypt(blob, CONTEXT) == b"two"
        vault.stop()
        # ... and with Azure down, the in-memory KEK does.
        assert (
            make_engine(fresh=True, keys=(other,), retry_total=0).decrypt(blob, CONTEXT) == b"two"
        )
    finally:
        vault.stop()


def test_registered_only_through_the_entry_point_group() -> None:
    assert "azure-kv" not in ProviderRegistry().providers  # nothing ambient
    registry = ProviderRegistry.load(allow=["azure-kv"])
    info = registry.providers["azure-kv"]
    assert info.plugin == "azure-kv"
    assert info.distribution == "kmsenvelope-azure"
    assert info.factory is kmsenvelope_azure.plugin.open_key


def test_concurrent_wraps_and_unwraps_share_one_kek(
    cloud: Cloud, oct_key: KeyVaultKey, rsa_key: KeyVaultKey, provider: AzureKeyVaultProvider
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keks = [provider(uri_of(k), cloud.settings(key_cache_ttl=0)) for k in (rsa_key, oct_key)]

    def round_trip(i: int) -> bool:
        kek = keks[i % 2]
        dek = os.urandom(32)
        return kek.unwrap(kek.wrap(dek, CONTEXT), CONTEXT) == dek

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(round_trip, range(32)))
