"""Errors cross process boundaries (a process pool, a Dask cluster) as themselves: pickled and
unpickled, each keeps its class, message, exit code and details."""

from __future__ import annotations

import pickle

from kmsenvelope.errors import (
    AccessDeniedError,
    ConfigError,
    KeyNotFoundError,
    NoRecipientError,
    ProviderUnavailableError,
    RecipientAttempt,
)


def test_no_recipient_error_keeps_its_attempts() -> None:
    error = NoRecipientError(
        [
            RecipientAttempt(
                "aws-kms:arn:aws:kms:eu-west-1:1:key/a", "gone", KeyNotFoundError("x")
            ),
            RecipientAttempt("local:old", "not allowed"),
        ]
    )
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is NoRecipientError
    assert str(again) == str(error)
    assert again.attempts == error.attempts
    assert isinstance(again.attempts[0].error, KeyNotFoundError)
    assert again.exit_code == error.exit_code == 9


def test_other_errors_keep_message_and_details() -> None:
    for error in (
        ConfigError("bad"),
        AccessDeniedError("no"),
        ProviderUnavailableError("busy", retry_after=2.5),
    ):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error)
        assert str(again) == str(error)
        assert again.exit_code == error.exit_code
    assert (
        pickle.loads(pickle.dumps(ProviderUnavailableError("b", retry_after=2.5))).retry_after
        == 2.5
    )
