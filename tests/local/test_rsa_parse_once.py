"""Issue 10 / issue 11 item 8: a local RSA key is parsed once per unlocked keystore, not per
unwrap (parsing and checking a 3072-bit private key took ~100 ms of every unwrap).

The count comes from a pass-through spy on ``cryptography``'s loader; our own code runs as is.
The cache must never bypass the key's state: disabling the key or destroying the version still
stops unwraps that the cache could serve.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

import kmsenvelope
from kmsenvelope import NoRecipientError
from kmsenvelope.errors import KeyDestroyedError, KeyDisabledError
from kmsenvelope.local import Keystore
from kmsenvelope.local.provider import factory

CTX = {"app": "rsa"}


@pytest.fixture
def der_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of ``serialization.load_der_private_key`` (still calling the real one)."""
    calls: list[int] = []
    real: Callable[..., Any] = serialization.load_der_private_key

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(serialization, "load_der_private_key", counting)
    return calls


def test_many_unwraps_parse_the_private_key_once(
    keystore: Keystore, keystore_dir: Path, der_loads: list[int]
) -> None:
    keystore.create_key("r", "rsa3072")
    kek = factory("local:r", {"keystore": str(keystore_dir)})
    deks = [os.urandom(32) for _ in range(20)]
    wrapped = [kek.wrap(d, CTX) for d in deks]  # wrapping uses the public key only
    assert [kek.unwrap(w, CTX) for w in wrapped] == deks
    assert len(der_loads) == 1

    engine = kmsenvelope.Engine()
    blobs = [engine.encrypt(f"m{i}".encode(), ["local:r"], CTX) for i in range(10)]
    before = len(der_loads)
    reader = kmsenvelope.Engine()
    assert [reader.decrypt(b, CTX) for b in blobs] == [f"m{i}".encode() for i in range(10)]
    assert len(der_loads) - before <= 1


def test_the_parsed_key_does_not_outlive_the_keys_state(
    keystore: Keystore, keystore_dir: Path, der_loads: list[int]
) -> None:
    keystore.create_key("r", "rsa3072")
    kek = factory("local:r", {"keystore": str(keystore_dir)})
    dek = os.urandom(32)
    w1 = kek.wrap(dek, CTX)
    assert kek.unwrap(w1, CTX) == dek  # parsed and cached now

    keystore.set_enabled("r", False)
    with pytest.raises(KeyDisabledError):
        kek.unwrap(w1, CTX)
    keystore.set_enabled("r", True)
    assert kek.unwrap(w1, CTX) == dek
    keystore.rotate("r")
    keystore.destroy_version("r", 1)
    with pytest.raises(KeyDestroyedError):
        kek.unwrap(w1, CTX)
    blob = kmsenvelope.Engine().encrypt(b"v2", ["local:r"], CTX)
    assert kmsenvelope.Engine().decrypt(blob, CTX) == b"v2"
    keystore.rotate("r")
    keystore.destroy_version("r", 2)
    with pytest.raises(NoRecipientError):
        kmsenvelope.Engine().decrypt(blob, CTX)
