"""Strict by default: an envelope cannot choose which keys (services, hosts, accounts) we contact.

With no ``allowed_keys``, decryption opens only keys the user named (configured recipients,
``--to``/``--add``, keys handed in code or encrypted to by the same engine, ``--allow``) and
the local keystore's own keys; one envelope causes at most ``max_unwrap_attempts`` unwraps;
opened KEKs are kept in a bounded LRU.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

import kmsenvelope
from kmsenvelope import Config, ConfigError, Engine, NoRecipientError, ProviderRegistry
from kmsenvelope.config import DEFAULT_MAX_UNWRAP_ATTEMPTS
from kmsenvelope.errors import MalformedEnvelopeError, UnwrapError
from kmsenvelope.kek import WrappedKey
from kmsenvelope.local import Keystore
from kmsenvelope.memory import InMemoryKEK


class Service:
    """A provider standing for a remote KMS: records every key opened and every unwrap call."""

    opened: ClassVar[list[str]] = []
    unwraps: ClassVar[list[str]] = []
    kek = InMemoryKEK(bytes(range(32)), "shared")
    aliases: ClassVar[dict[str, str]] = {}  # "svc:alias/x" -> the key id it resolves to

    def __init__(self, uri: str, settings: Mapping[str, Any]) -> None:
        Service.opened.append(uri)
        self.uri = uri

    @property
    def key_id(self) -> str:
        return self.uri

    def _resolved(self) -> str:
        return Service.aliases.get(self.uri, self.uri)

    def recognizes(self, key_id: str) -> bool:
        return key_id == self._resolved()

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        w = self.kek.wrap(dek, context)
        return WrappedKey("svc", self._resolved(), w.algorithm, w.ciphertext)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        Service.unwraps.append(wrapped.key_id)
        if wrapped.key_id.endswith("broken"):
            raise UnwrapError(f"{wrapped.key_id}: refused by the service")
        inner = WrappedKey("memory", self.kek.key_id, wrapped.algorithm, wrapped.ciphertext)
        return self.kek.unwrap(inner, context)


@pytest.fixture
def registry() -> ProviderRegistry:
    Service.opened, Service.unwraps, Service.aliases = [], [], {}
    reg = ProviderRegistry()
    reg.register("svc", Service)
    return reg


def _sealed(registry: ProviderRegistry, to: list[str], data: bytes = b"secret") -> bytes:
    """An envelope written by someone else (another engine)."""
    blob = Engine(registry=registry, config=Config()).encrypt(data, to)
    Service.opened, Service.unwraps = [], []
    return blob


def test_a_key_nobody_named_is_never_opened(registry: ProviderRegistry) -> None:
    blob = _sealed(registry, ["svc:attacker-account/key"])
    with pytest.raises(NoRecipientError) as info:
        Engine(registry=registry, config=Config()).decrypt(blob)
    assert Service.opened == []
    assert Service.unwraps == []
    (attempt,) = info.value.attempts
    assert attempt.key_id == "svc:attacker-account/key"
    assert "not a key you named" in attempt.reason
    assert "--allow svc:attacker-account/key," in attempt.reason
    assert "allowed_keys" in attempt.reason
    assert "KMSENVELOPE_ALLOWED_KEYS" in attempt.reason


def test_configured_recipients_and_their_versions_are_trusted(registry: ProviderRegistry) -> None:
    blob = _sealed(registry, ["svc:evil", "svc:prod/7"])
    engine = Engine(registry=registry, config=Config(recipients=("svc:prod",)))
    assert engine.decrypt(blob) == b"secret"
    assert "svc:prod/7" in Service.opened
    assert "svc:evil" not in Service.opened
    # A name is not a prefix: svc:prodX is another key.
    other = _sealed(registry, ["svc:prodX/1"])
    with pytest.raises(NoRecipientError):
        engine.decrypt(other)
    assert "svc:prodX/1" not in Service.opened


def test_keys_named_in_code_or_encrypted_to_are_trusted(registry: ProviderRegistry) -> None:
    blob = _sealed(registry, ["svc:named"])
    assert Engine(registry=registry, config=Config(), trusted_keys=["svc:named"]).decrypt(blob)
    writer = Engine(registry=registry, config=Config())
    own = writer.encrypt(b"round trip", ["svc:mine"])
    assert writer.decrypt(own) == b"round trip"  # the engine named svc:mine by encrypting to it
    with pytest.raises(TypeError):
        Engine(registry=registry, config=Config(), trusted_keys="svc:named")


def test_allow_patterns_add_to_either_mode(registry: ProviderRegistry) -> None:
    blob = _sealed(registry, ["svc:partner/key"])
    assert Engine(registry=registry, config=Config(), allow=["svc:partner/*"]).decrypt(blob)
    # With allowed_keys set it is the complete list: a named recipient alone is not enough…
    pinned = Config(recipients=("svc:partner/key",), allowed_keys=("local:*",))
    with pytest.raises(NoRecipientError, match="not in allowed_keys"):
        Engine(registry=registry, config=pinned).decrypt(blob)
    # …but --allow patterns still add to it.
    assert Engine(registry=registry, config=pinned, allow=["svc:partner/key"]).decrypt(blob)
    with pytest.raises(ConfigError, match="spell the URL's host out"):
        Engine(registry=registry, config=Config(), allow=["svc:https://host*"])


def test_a_named_alias_vouches_for_the_key_it_resolves_to(registry: ProviderRegistry) -> None:
    Service.aliases["svc:alias/prod"] = "svc:key/1234"
    blob = _sealed(registry, ["svc:alias/prod"])  # recorded as svc:key/1234
    assert kmsenvelope.inspect_envelope(blob).recipients[0].key_id == "svc:key/1234"
    Service.aliases["svc:alias/prod"] = "svc:key/1234"
    engine = Engine(registry=registry, config=Config(recipients=("svc:alias/prod",)))
    assert engine.decrypt(blob) == b"secret"
    # Only the named alias was asked; a key another envelope names is still refused.
    other = _sealed(registry, ["svc:key/9999"])
    Service.aliases["svc:alias/prod"] = "svc:key/1234"
    with pytest.raises(NoRecipientError):
        engine.decrypt(other)
    assert "svc:key/9999" not in Service.opened


def test_local_keystore_keys_need_no_naming(keystore: Keystore) -> None:
    keystore.create_key("own")
    blob = kmsenvelope.encrypt(b"local", ["local:own"])
    assert Engine(config=kmsenvelope.load_config()).decrypt(blob) == b"local"


def test_unwrap_attempts_per_envelope_are_capped(registry: ProviderRegistry) -> None:
    names = [f"svc:k{i}-broken" for i in range(20)] + ["svc:good"]
    blob = _sealed(registry, names)
    engine = Engine(registry=registry, config=Config(), allow=["svc:*"], max_unwrap_attempts=3)
    with pytest.raises(NoRecipientError) as info:
        engine.decrypt(blob)
    assert len(Service.unwraps) == 3
    reasons = [a.reason for a in info.value.attempts]
    assert all("max_unwrap_attempts" in r for r in reasons[3:])
    default = Engine(registry=registry, config=Config(), allow=["svc:*"])
    assert default.max_unwrap_attempts == DEFAULT_MAX_UNWRAP_ATTEMPTS
    Service.unwraps = []
    with pytest.raises(NoRecipientError):
        default.decrypt(blob)
    assert len(Service.unwraps) == DEFAULT_MAX_UNWRAP_ATTEMPTS
    for bad in (0, 65):
        with pytest.raises(ConfigError, match="max_unwrap_attempts"):
            Engine(registry=registry, config=Config(), max_unwrap_attempts=bad)


def test_the_kek_cache_is_bounded(registry: ProviderRegistry) -> None:
    engine = Engine(registry=registry, config=Config(), allow=["svc:*"])
    for i in range(300):
        engine.open_key(f"svc:key{i}")
    assert len(engine._cache) <= 256
    Service.opened = []
    engine.open_key("svc:key299")  # recent: still cached
    engine.open_key("svc:key0")  # evicted: opened again
    assert Service.opened == ["svc:key0"]


def test_a_failed_open_is_never_cached() -> None:
    calls: list[str] = []

    def factory(uri: str, settings: Mapping[str, Any]) -> InMemoryKEK:
        calls.append(uri)
        raise ConfigError("no such thing")

    reg = ProviderRegistry()
    reg.register("bad", factory)
    engine = Engine(registry=reg, config=Config())
    for _ in range(2):
        with pytest.raises(ConfigError):
            engine.open_key("bad:x")
    assert calls == ["bad:x", "bad:x"]
    assert len(engine._cache) == 0


def test_a_repeated_recipient_is_wrapped_once(registry: ProviderRegistry) -> None:
    blob = Engine(registry=registry, config=Config()).encrypt(b"x", ["svc:a", "svc:a"])
    assert [r.key_id for r in kmsenvelope.inspect_envelope(blob).recipients] == ["svc:a"]


# -- the compact form, streamed ------------------------------------------------------------------


def test_leading_whitespace_rule_is_the_same_streaming_and_in_memory(
    registry: ProviderRegistry,
) -> None:
    engine = Engine(registry=registry, config=Config(), allow=["svc:*"])
    compact = engine.encrypt(b"spaced", ["svc:a"], armor=True)
    padded = b" " * 1000 + b"\r\n\t" * 100 + compact
    assert engine.decrypt(padded) == b"spaced"
    out = io.BytesIO()
    engine.decrypt_stream(io.BytesIO(padded), out)
    assert out.getvalue() == b"spaced"
    # Vertical tab and form feed are not compact-form whitespace, in either path.
    for bad in (b"\x0b" + compact, b"\x0c" + compact):
        with pytest.raises(MalformedEnvelopeError):
            engine.decrypt(bad)
        with pytest.raises(MalformedEnvelopeError):
            engine.decrypt_stream(io.BytesIO(bad), io.BytesIO())


def _noncanonical(compact: bytes) -> bytes:
    """The same envelope with unused low bits of the last base64 character set."""
    text = compact.strip()
    body = text[len(b"kmsenv1.") :]
    assert len(body) % 4 in (2, 3)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(body[-1:])
    return text[:-1] + alphabet[last | 1 : (last | 1) + 1]


@pytest.mark.parametrize("kind", ["noncanonical", "bad-length", "bad-character", "padding"])
def test_malformed_compact_stream_is_refused_before_any_provider_call(
    registry: ProviderRegistry, kind: str
) -> None:
    engine = Engine(registry=registry, config=Config(), allow=["svc:*"])
    for size in range(4, 8):  # one of these leaves a partial final base64 group
        compact = engine.encrypt(os.urandom(size), ["svc:a"], armor=True).strip()
        if len(compact[len(b"kmsenv1.") :]) % 4 in (2, 3):
            break
    body_length = len(compact) - len(b"kmsenv1.")
    bad = {
        "noncanonical": _noncanonical(compact),
        "bad-length": compact + b"A" * ((1 - body_length) % 4 or 4),  # length 1 mod 4
        "bad-character": compact[:-3] + b"!" + compact[-2:],
        "padding": compact + b"==",
    }[kind]
    Service.opened, Service.unwraps = [], []
    with pytest.raises(MalformedEnvelopeError):
        engine.decrypt_stream(io.BytesIO(bad), io.BytesIO())
    assert Service.unwraps == []
    with pytest.raises(MalformedEnvelopeError):
        engine.decrypt(bad)
    assert Service.unwraps == []


def test_large_compact_stream_still_decrypts_in_bounded_memory(
    registry: ProviderRegistry, tmp_path: Path
) -> None:
    engine = Engine(registry=registry, config=Config(), allow=["svc:*"])
    data = os.urandom(20 << 20)  # decoded past the 16 MiB in-memory spool: spills to a file
    sealed = tmp_path / "big.txt"
    with sealed.open("wb") as dst:
        engine.encrypt_stream(io.BytesIO(data), dst, ["svc:a"], armor=True)
    out = io.BytesIO()
    with sealed.open("rb") as src:
        assert engine.decrypt_stream(src, out) == len(data)
    assert out.getvalue() == data


@pytest.mark.parametrize(
    "key_id",
    ["svc:x'$(touch /tmp/pwned)'", "svc:*", "svc:a b", 'svc:"q"', "svc:a?b", "svc:[ab]"],
)
def test_the_allow_hint_is_never_a_pattern_or_shell_code_an_envelope_chose(
    registry: ProviderRegistry, key_id: str
) -> None:
    blob = _sealed(registry, [key_id])
    with pytest.raises(NoRecipientError) as info:
        Engine(registry=registry, config=Config()).decrypt(blob)
    (attempt,) = info.value.attempts
    assert "--allow PATTERN" in attempt.reason
    assert "--allow '" not in attempt.reason


@pytest.mark.parametrize("suffix", ["//evil", "/../evil", "/a/b", "/", "/.x", "/v 1"])
def test_a_named_key_covers_one_version_segment_only(
    registry: ProviderRegistry, suffix: str
) -> None:
    blob = _sealed(registry, [f"svc:prod{suffix}"])
    with pytest.raises(NoRecipientError):
        Engine(registry=registry, config=Config(recipients=("svc:prod",))).decrypt(blob)
    assert Service.opened == ["svc:prod"]  # only the named key (asked whether it recognises it)
    assert Service.unwraps == []


def test_two_names_of_one_key_version_make_one_stanza(registry: ProviderRegistry) -> None:
    Service.aliases["svc:alias/a"] = "svc:key/1"
    engine = Engine(registry=registry, config=Config())
    blob = engine.encrypt(b"x", ["svc:alias/a", "svc:key/1", "svc:other"])
    assert [r.key_id for r in kmsenvelope.inspect_envelope(blob).recipients] == [
        "svc:key/1",
        "svc:other",
    ]


def test_a_misspelt_provider_setting_is_a_config_error_not_a_recipient_reason(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("own")
    blob = kmsenvelope.encrypt(b"local", ["local:own"])
    typo = Config(providers={"local": {"keystor": str(keystore_dir)}})
    with pytest.raises(ConfigError, match="did you mean 'keystore'"):
        Engine(config=typo).decrypt(blob)


def test_keys_learned_by_encrypting_are_bounded(registry: ProviderRegistry) -> None:
    engine = Engine(registry=registry, config=Config(recipients=("svc:configured",)))
    for i in range(300):
        engine.encrypt(b"x", [f"svc:k{i}"])
    named = engine.trust.named
    assert named[0] == "svc:configured"  # what the user configured is never forgotten
    assert len(named) <= 1 + 256
    assert "svc:k299" in named
    assert "svc:k0" not in named
