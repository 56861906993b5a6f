"""Helpers shared by the plugin-host tests in tests/core and tests/cli (not collected: the name
has no ``test_`` prefix; importable from both because pytest puts this folder, home of the root
conftest.py, on ``sys.path``)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

try:
    distribution("kmsenvelope-example-plugin")
    HAVE_EXAMPLE = True
except Exception:
    HAVE_EXAMPLE = False
needs_example = pytest.mark.skipif(
    not HAVE_EXAMPLE,
    reason="tests/fixtures/example_plugin is not installed (nox -s tests installs it)",
)


def plugin_module(hooks: dict[str, Any]) -> ModuleType:
    """A plugin module holding ``hooks`` (what an entry point would load)."""
    module = ModuleType("kmsenvelope_test_plugin")
    for name, hook in hooks.items():
        setattr(module, name, hook)
    return module


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m kmsenvelope ARGS`` in ``cwd`` with exactly ``env``, output as text."""
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def broken_distribution(root: Path) -> Path:
    """A distribution on ``root`` whose ``kmsenvelope`` entry point names a missing module."""
    info = root / "kmsenvelope_broken_demo-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: kmsenvelope-broken-demo\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[kmsenvelope]\nbroken-demo = kmsenvelope_no_such_module_xyz\n"
    )
    return root
