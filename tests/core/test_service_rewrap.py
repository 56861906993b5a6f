"""The ``ServiceRewrapKey`` hook: ``rewrap --rotate`` lets a service move a stanza to its key's
current version by itself (Vault Transit's ``rewrap``), and the core still verifies the new
stanza before anything is written."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import pytest

import kmsenvelope
from kmsenvelope import Config, Engine, ProviderError, ProviderRegistry, WrappedKey
from kmsenvelope.kek import RotatableKey, ServiceRewrapKey
from kmsenvelope.memory import InMemoryKEK
from kmsenvelope.rewrapping import RewrapPlan, rewrap_bytes


class Service:
    """A versioned key service: ``svc:k/N`` per version, a ``rewrap`` that works inside."""

    def __init__(self) -> None:
        self.versions = {1: InMemoryKEK.generate("v1"), 2: InMemoryKEK.generate("v2")}
        self.current = 1
        self.calls: list[str] = []
        self.broken = False
        self.lock = threading.Lock()

    def _inner(self, wrapped: WrappedKey, version: int) -> WrappedKey:
        kek = self.versions[version]
        return WrappedKey("memory", kek.key_id, wrapped.algorithm, wrapped.ciphertext)

    def wrap(self, version: int, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        self.calls.append("wrap")
        w = self.versions[version].wrap(dek, context)
        return WrappedKey("svc", f"svc:k/{version}", w.algorithm, w.ciphertext)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        self.calls.append("unwrap")
        version = int(wrapped.key_id.rsplit("/", 1)[1])
        return self.versions[version].unwrap(self._inner(wrapped, version), context)

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        self.calls.append("rewrap")
        version = int(wrapped.key_id.rsplit("/", 1)[1])
        dek = self.versions[version].unwrap(self._inner(wrapped, version), context)
        if self.broken:  # a service bug: the new stanza holds another key
            dek = bytes(len(dek))
        w = self.versions[self.current].wrap(dek, context)
        return WrappedKey("svc", f"svc:k/{self.current}", w.algorithm, w.ciphertext)


def _registry(service: Service, other: InMemoryKEK) -> ProviderRegistry:
    class Key:
        def __init__(self, uri: str, settings: object) -> None:
            self.key_id = uri

        def _version(self) -> int:
            tail = self.key_id.rsplit("/", 1)
            return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else service.current

        def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
            return service.wrap(self._version(), dek, context)

        def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
            return service.unwrap(wrapped, context)

        def latest(self) -> Key:
            return Key(f"svc:k/{service.current}", {})

        def rewrap_latest(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
            return service.rewrap(wrapped, context)

    class Other:
        def __init__(self, uri: str, settings: object) -> None:
            self.key_id = uri

        def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
            w = other.wrap(dek, context)
            return WrappedKey("other", self.key_id, w.algorithm, w.ciphertext)

        def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
            inner = WrappedKey("memory", other.key_id, wrapped.algorithm, wrapped.ciphertext)
            return other.unwrap(inner, context)

    assert isinstance(Key("svc:k", {}), RotatableKey)
    assert isinstance(Key("svc:k", {}), ServiceRewrapKey)
    registry = ProviderRegistry()
    registry.register("svc", Key)
    registry.register("other", Other)
    return registry


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def engine(service: Service) -> Engine:
    config = Config(allowed_keys=("svc:*", "other:*"))
    return Engine(registry=_registry(service, InMemoryKEK.generate("o")), config=config)


def test_rotation_goes_through_the_service_and_the_new_stanza_is_verified(
    service: Service, engine: Engine
) -> None:
    envelope = engine.encrypt(b"rotate me", ["other:a", "svc:k"], {"tenant": "t1"})
    service.current = 2
    service.calls.clear()
    rotated, result = rewrap_bytes(engine, envelope, RewrapPlan.of(rotate=True))
    assert result.changed
    ids = [r.key_id for r in kmsenvelope.inspect_envelope(rotated).recipients]
    assert ids == ["other:a", "svc:k/2"]
    # The service re-wrapped the stanza itself (the data key was never sent to it to wrap);
    # the new stanza was unwrapped once, to check it, before the envelope was returned.
    assert service.calls == ["rewrap", "unwrap"]
    only_service = Engine(registry=engine.registry, config=Config(allowed_keys=("svc:*",)))
    assert only_service.decrypt(rotated, {"tenant": "t1"}) == b"rotate me"


def test_a_service_rewrap_that_breaks_the_stanza_is_never_written(
    service: Service, engine: Engine
) -> None:
    """Even with another recipient kept (which would still open the envelope), a rewrapped
    stanza that does not give back the data key fails the job: removing the other recipient
    later must never leave an envelope nobody can open."""
    envelope = engine.encrypt(b"rotate me", ["other:a", "svc:k"], {"tenant": "t1"})
    service.current = 2
    service.broken = True
    with pytest.raises(ProviderError, match="different data key"):
        rewrap_bytes(engine, envelope, RewrapPlan.of(rotate=True))
