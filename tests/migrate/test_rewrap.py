"""Re-wrap: recipients change, the payload bytes do not."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

import pytest

import kmsenvelope
from kmsenvelope import (
    ConfigError,
    Engine,
    NoRecipientError,
    ProviderError,
    ProviderRegistry,
    WrappedKey,
    hazmat,
)
from kmsenvelope.config import Config
from kmsenvelope.format.compact import from_compact
from kmsenvelope.local import Keystore
from kmsenvelope.memory import InMemoryKEK


def payload_of(envelope: bytes) -> bytes:
    raw = from_compact(envelope) if envelope.lstrip().startswith(b"kmsenv1.") else envelope
    _, size = hazmat.parse_header(raw)
    return raw[size:]


def key_ids(envelope: bytes) -> list[str]:
    return [r.key_id for r in kmsenvelope.inspect_envelope(envelope).recipients]


@pytest.fixture
def keys(keystore: Keystore) -> Keystore:
    for name in ("a", "b", "c"):
        keystore.create_key(name)
    return keystore


@pytest.mark.parametrize("armor", [False, True])
def test_payload_bytes_identical_multi_chunk(keys: Keystore, armor: bool) -> None:
    data = os.urandom(10_000)
    env = kmsenvelope.encrypt(data, ["local:a"], {"t": "1"}, armor=armor, chunk_size=1024)
    out = kmsenvelope.rewrap(env, add=["local:b"], remove=["local:a"])
    assert out.startswith(b"kmsenv1." if armor else b"KMSENV")
    assert payload_of(out) == payload_of(env)
    assert len(payload_of(out)) > 5 * 1024
    assert key_ids(out) == ["local:b/1"]
    assert kmsenvelope.decrypt(out, {"t": "1"}) == data


def test_streaming_rewrap_of_a_file(keys: Keystore, tmp_path: object) -> None:
    data = os.urandom(300_000)
    src = io.BytesIO()
    kmsenvelope.encrypt_stream(io.BytesIO(data), src, ["local:a"], chunk_size=4096)
    dst = io.BytesIO()
    assert kmsenvelope.rewrap_stream(io.BytesIO(src.getvalue()), dst, add=["local:b", "local:c"])
    assert payload_of(dst.getvalue()) == payload_of(src.getvalue())
    assert key_ids(dst.getvalue()) == ["local:a/1", "local:b/1", "local:c/1"]


def test_remove_by_versionless_uri_by_kek_and_by_provider(keys: Keystore) -> None:
    mem = InMemoryKEK.generate("mem")
    env = kmsenvelope.encrypt(b"x", ["local:a", "local:b", mem])
    assert key_ids(kmsenvelope.rewrap(env, remove=["local:a"], keys=[mem])) == [
        "local:b/1",
        "memory:mem",
    ]
    assert key_ids(kmsenvelope.rewrap(env, remove=[mem])) == ["local:a/1", "local:b/1"]
    assert key_ids(kmsenvelope.rewrap(env, remove=["local:b/1"])) == ["local:a/1", "memory:mem"]
    only_mem = kmsenvelope.rewrap(env, remove_providers=["local"], keys=[mem])
    assert key_ids(only_mem) == ["memory:mem"]
    assert kmsenvelope.decrypt(only_mem, keys=[mem]) == b"x"


def test_refuses_to_remove_the_last_recipient(keys: Keystore) -> None:
    env = kmsenvelope.encrypt(b"x", ["local:a"])
    with pytest.raises(ConfigError, match="every recipient"):
        kmsenvelope.rewrap(env, remove_providers=["local"])
    with pytest.raises(ConfigError):
        kmsenvelope.rewrap(env, remove=["local:a"])


def test_no_change_returns_the_same_bytes(keys: Keystore) -> None:
    env = kmsenvelope.encrypt(b"x", ["local:a"])
    assert kmsenvelope.rewrap(env) == env
    assert kmsenvelope.rewrap(env, add=["local:a"]) == env  # already a recipient
    assert kmsenvelope.rewrap(env, remove=["local:zzz"]) == env  # nothing to remove


def test_rotate_moves_to_the_current_version_then_old_version_can_go(keys: Keystore) -> None:
    env = kmsenvelope.encrypt(b"rotate me", ["local:a", "local:b"])
    keys.rotate("a")
    rotated = kmsenvelope.rewrap(env, rotate=True)
    assert key_ids(rotated) == ["local:a/2", "local:b/1"]  # b has no newer version
    assert payload_of(rotated) == payload_of(env)
    keys.destroy_version("a", 1)
    only_a = kmsenvelope.rewrap(rotated, remove=["local:b"])
    assert kmsenvelope.decrypt(only_a) == b"rotate me"
    with pytest.raises(NoRecipientError, match="destroyed"):
        kmsenvelope.decrypt(kmsenvelope.rewrap(env, remove=["local:b"]))


def test_context_is_kept_and_bound(keys: Keystore) -> None:
    env = kmsenvelope.encrypt(b"x", ["local:a"], {"tenant": "7"})
    out = kmsenvelope.rewrap(env, add=["local:b"], remove=["local:a"])
    assert dict(kmsenvelope.inspect_envelope(out).context) == {"tenant": "7"}
    with pytest.raises(kmsenvelope.AuthenticationError):
        kmsenvelope.decrypt(out, {"tenant": "8"})


def test_no_recipient_reachable_means_no_rewrap(keys: Keystore) -> None:
    mem = InMemoryKEK.generate("gone")
    env = kmsenvelope.encrypt(b"x", [mem])
    with pytest.raises(NoRecipientError):
        kmsenvelope.rewrap(env, add=["local:a"])


def test_tampered_envelope_is_not_rewrapped(keys: Keystore) -> None:
    env = bytearray(kmsenvelope.encrypt(b"x", ["local:a", "local:b"]))
    env[30] ^= 1  # inside the header (context/recipients area)
    with pytest.raises(kmsenvelope.DecryptionError):
        kmsenvelope.rewrap(bytes(env), add=["local:c"])


class _Lossy:
    """A provider whose wrap 'works' but whose output no fresh instance can unwrap
    (like the SDK's local-wrap trap for symmetric Azure keys)."""

    def __init__(self, uri: str, settings: Mapping[str, object]) -> None:
        self._uri = uri
        self._kek = InMemoryKEK.generate("lossy")  # a new random key per instance

    @property
    def key_id(self) -> str:
        return self._uri

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        w = self._kek.wrap(dek, context)
        return WrappedKey("lossy", self._uri, w.algorithm, w.ciphertext)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        inner = WrappedKey("memory", "memory:lossy", wrapped.algorithm, wrapped.ciphertext)
        return self._kek.unwrap(inner, context)


def test_verification_catches_a_recipient_that_cannot_be_unwrapped(keys: Keystore) -> None:
    registry = ProviderRegistry.load(allow=["local"])
    registry.register("lossy", _Lossy)
    engine = Engine(registry=registry, config=kmsenvelope.default_engine().config)
    env = engine.encrypt(b"x", ["local:a"])
    from kmsenvelope.rewrapping import RewrapPlan, rewrap_bytes

    with pytest.raises(ProviderError, match="verification"):
        rewrap_bytes(engine, env, RewrapPlan.of(add=["lossy:k"], remove=["local:a"]))


def test_single_string_arguments_are_refused(keys: Keystore) -> None:
    env = kmsenvelope.encrypt(b"x", ["local:a"])
    with pytest.raises(TypeError):
        kmsenvelope.rewrap(env, add="local:b")


def test_engine_without_ambient_config() -> None:
    a, b = InMemoryKEK.generate("a"), InMemoryKEK.generate("b")
    engine = Engine(registry=ProviderRegistry(), config=Config(), keys=[a, b])
    from kmsenvelope.rewrapping import RewrapPlan, rewrap_bytes

    env = engine.encrypt(b"x", [a])
    out, result = rewrap_bytes(engine, env, RewrapPlan.of(add=[b], remove=[a]))
    assert result.changed
    assert result.added == ("memory:b",)
    assert result.removed == ("memory:a",)
    assert Engine(registry=ProviderRegistry(), config=Config(), keys=[b]).decrypt(out) == b"x"


def test_rotate_makes_no_wrap_call_when_already_current(keys: Keystore) -> None:
    env = kmsenvelope.encrypt(b"x", ["local:a"])
    audit = keys.directory / "audit.log"
    before = audit.read_bytes().count(b'"op":"wrap"')
    assert kmsenvelope.rewrap(env, rotate=True) == env
    assert audit.read_bytes().count(b'"op":"wrap"') == before
