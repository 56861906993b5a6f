"""``config show`` checks each installed provider's table against its settings schema, so a
misspelt setting is named (file:line and a suggestion) on stderr; the configuration is still
shown, with undeclared settings redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmsenvelope.cli import main


def test_config_show_reports_a_misspelt_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[providers.local]\nkeystor = "/var/lib/ks"\n')
    assert main(["--config", str(config), "config", "show"]) == 0
    out, err = capsys.readouterr()
    assert f"warning: {config}:2: unknown setting 'keystor' in [providers.local]" in err
    assert "did you mean 'keystore'" in err
    assert '"keystor": "***"' in out
    config.write_text('[providers.local]\nkeystore = "/var/lib/ks"\n')
    assert main(["--config", str(config), "config", "show"]) == 0
    assert '"keystore": "/var/lib/ks"' in capsys.readouterr().out
