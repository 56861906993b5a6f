"""A failed unwrap keeps its error object: callers (and the CLI's exit code) can tell
"throttled, retry later" from "this key is not for you"."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from core_support import SharedKeyProvider

import kmsenvelope
from kmsenvelope import Config, Engine, NoRecipientError, ProviderRegistry
from kmsenvelope.cli import main
from kmsenvelope.errors import (
    AccessDeniedError,
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    KmsEnvelopeError,
    ProviderError,
    ProviderUnavailableError,
    RecipientAttempt,
    ThrottledError,
    UnwrapError,
)
from kmsenvelope.kek import WrappedKey
from kmsenvelope.local import Keystore

# What the service answers an unwrap for a key whose name starts with each word.
FAILURES: dict[str, Exception] = {
    "throttled": ThrottledError("svc: rate exceeded"),
    "down": ProviderUnavailableError("svc: connection refused", retry_after=2.0),
    "denied": AccessDeniedError("svc: not authorized to unwrap"),
    "missing": KeyNotFoundError("svc: no such key"),
    "disabled": KeyDisabledError("svc: key is disabled"),
    "destroyed": KeyDestroyedError("svc: key version destroyed"),
    "rejected": UnwrapError("svc: wrapped key rejected"),
    "buggy": RuntimeError("plugin bug"),
}


class FailingService(SharedKeyProvider):
    """A provider whose keys wrap normally and fail to unwrap the way their name says."""

    scheme = "svc"

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        raise FAILURES[self.uri.removeprefix("svc:").split("-")[0]]


@pytest.fixture
def registry() -> ProviderRegistry:
    reg = ProviderRegistry()
    reg.register("svc", FailingService)
    return reg


def _failure(registry: ProviderRegistry, names: list[str], **engine: Any) -> NoRecipientError:
    """The NoRecipientError of decrypting an envelope for ``svc:NAME`` keys elsewhere."""
    blob = Engine(registry=registry, config=Config()).encrypt(b"x", [f"svc:{n}" for n in names])
    reader = Engine(registry=registry, config=Config(), **engine)
    with pytest.raises(NoRecipientError) as info:
        reader.decrypt(blob)
    return info.value


def test_each_attempt_carries_the_error_its_provider_raised(registry: ProviderRegistry) -> None:
    error = _failure(registry, ["throttled", "denied"], allow=["svc:*"])
    throttled, denied = error.attempts
    assert throttled.key_id == "svc:throttled"
    assert throttled.error is FAILURES["throttled"]
    assert throttled.retryable
    assert throttled.reason == "svc: rate exceeded"  # the string is kept as it was
    assert denied.error is FAILURES["denied"]
    assert not denied.retryable
    assert str(denied) == "svc:denied: svc: not authorized to unwrap"


@pytest.mark.parametrize(
    ("names", "code", "retryable"),
    [
        (["throttled", "down"], 7, True),
        (["down"], 7, True),
        (["denied", "denied-too"], 8, False),
        (["missing"], 9, False),
        (["disabled", "destroyed"], 10, False),
        (["throttled", "denied"], 4, False),  # mixed kinds
        (["disabled", "missing"], 4, False),
        (["rejected"], 4, False),  # a rejected wrapped key is not a kind of its own
        (["buggy"], 4, False),
    ],
)
def test_the_exit_code_is_the_kind_every_recipient_failed_with(
    registry: ProviderRegistry, names: list[str], code: int, retryable: bool
) -> None:
    error = _failure(registry, names, allow=["svc:*"])
    assert error.exit_code == code
    assert error.retryable is retryable
    assert isinstance(error, kmsenvelope.DecryptionError)
    assert NoRecipientError.exit_code == 4  # the class default is untouched


def test_recipients_never_contacted_carry_no_error(registry: ProviderRegistry) -> None:
    """A key the policy refused has no error object and does not decide the exit code."""
    refused = _failure(registry, ["down"])  # strict: nobody named svc:down
    (attempt,) = refused.attempts
    assert attempt.error is None
    assert not attempt.retryable
    assert "not a key you named" in attempt.reason
    assert refused.exit_code == 4
    assert not refused.retryable

    mixed = _failure(registry, ["down", "denied"], allow=["svc:down"])
    assert [a.error for a in mixed.attempts] == [FAILURES["down"], None]
    assert mixed.exit_code == 7  # the one contacted recipient was unavailable: retry later


def test_the_attempt_cap_is_not_an_error_of_the_provider(registry: ProviderRegistry) -> None:
    error = _failure(registry, ["throttled", "denied"], allow=["svc:*"], max_unwrap_attempts=1)
    first, capped = error.attempts
    assert first.error is FAILURES["throttled"]
    assert capped.error is None
    assert "max_unwrap_attempts" in capped.reason
    assert error.exit_code == 7


def test_an_unexpected_exception_becomes_a_provider_error(registry: ProviderRegistry) -> None:
    (attempt,) = _failure(registry, ["buggy"], allow=["svc:*"]).attempts
    assert type(attempt.error) is ProviderError
    assert attempt.error.__cause__ is FAILURES["buggy"]
    assert attempt.reason == "provider failed unexpectedly: RuntimeError: plugin bug"


def test_attempts_made_by_hand_still_work() -> None:
    """RecipientAttempt(key_id, reason) as before: no error, not retryable, code 4."""
    attempt = RecipientAttempt("k", "gone")
    assert attempt.error is None
    assert not attempt.retryable
    error = NoRecipientError([attempt, RecipientAttempt("j", "x", KeyNotFoundError("j: gone"))])
    assert error.exit_code == 9
    assert str(error) == "no recipient could unwrap the data key (k: gone; j: x)"


def test_subclasses_state_their_exit_code_once() -> None:
    class QuotaError(ProviderUnavailableError, exit_code=42):
        """A plugin's own error with its own code."""

    class LaterQuotaError(QuotaError):
        """Keeps its base's code."""

    assert QuotaError("q").exit_code == 42
    assert LaterQuotaError("q").exit_code == 42
    assert issubclass(QuotaError, KmsEnvelopeError)
    assert ProviderUnavailableError.exit_code == 7


def _decrypt_cli(envelope: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["decrypt", "-i", str(envelope), "-o", str(envelope.with_suffix(".out"))])
    return code, capsys.readouterr().err


def test_cli_exit_code_comes_from_the_errors(
    keystore: Keystore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keystore.create_key("main")
    envelope = tmp_path / "sealed.kenv"
    envelope.write_bytes(kmsenvelope.encrypt(b"data", ["local:main"]))

    keystore.set_enabled("main", False)
    code, err = _decrypt_cli(envelope, capsys)
    assert code == 10
    assert err.count("\n") == 1
    assert err.startswith("kmsenvelope: error: no recipient could unwrap the data key")
    assert "disabled" in err

    keystore.set_enabled("main", True)
    keystore.rotate("main")
    keystore.destroy_version("main", 1)
    code, err = _decrypt_cli(envelope, capsys)
    assert code == 10
    assert "destroyed" in err
