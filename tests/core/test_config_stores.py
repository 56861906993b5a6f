"""``[stores.SCHEME]`` tables in the config file: settings for the store a URL scheme opens (for
example ``[stores.az] account_url``), handed to the store's factory as ``store_settings``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmsenvelope import ConfigError
from kmsenvelope.config import load_config


def test_a_stores_table_reaches_the_store_settings(tmp_path: Path) -> None:
    path = tmp_path / "kmsenvelope.toml"
    path.write_text('[stores.az]\naccount_url = "https://acct.blob.core.windows.net"\n')
    config = load_config(path, env={})
    settings = config.store_settings("az")
    assert settings["account_url"] == "https://acct.blob.core.windows.net"
    assert "[stores.az]" in (settings.origin("account_url") or "")
    assert dict(config.store_settings("s3")) == {}
    # Shown redacted, like provider settings without a schema: a store setting may be secret.
    assert config.redacted()["stores"] == {"az": {"account_url": "***"}}
    assert "acct.blob" not in repr(config)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("stores = 3\n", "must be a table of [stores.SCHEME] tables"),
        ("[stores]\naz = 3\n", "must be a table of store settings"),
    ],
)
def test_a_malformed_stores_table_is_refused_with_its_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "kmsenvelope.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert problem in str(caught.value)
    assert f"{path}:" in str(caught.value)
