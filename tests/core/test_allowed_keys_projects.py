"""``allowed_keys`` patterns for Google Cloud KMS keys: the project id must be spelled out (and
closed by its '/') before any wildcard, as an AWS account id or a URL's host must be."""

from __future__ import annotations

import pytest

from kmsenvelope import ConfigError
from kmsenvelope.config import check_allowed_keys


@pytest.mark.parametrize(
    "pattern",
    [
        "gcp-kms:projects/acme*",
        "gcp-kms:projects/acme?prod/locations/*",
        "gcp-kms:projects/*",
        "gcp-kms:proj*",
    ],
)
def test_a_project_left_open_is_refused(pattern: str) -> None:
    with pytest.raises(ConfigError, match="project id"):
        check_allowed_keys([pattern])


@pytest.mark.parametrize(
    "pattern",
    [
        "gcp-kms:projects/acme-prod/*",
        "gcp-kms:projects/acme-prod/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/*",
        "gcp-kms:projects/acme-prod/locations/global/keyRings/r/cryptoKeys/k",
        "gcp-kms:*",
    ],
)
def test_a_spelled_out_project_is_accepted(pattern: str) -> None:
    assert check_allowed_keys([pattern]) == (pattern,)
