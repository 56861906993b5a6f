"""Checks for ``nox -s wheels``: the built wheels installed as a user would install them.

Usage: ``python scripts/check_wheels.py DIST CORE_REPORT FULL_REPORT`` where the reports are
``pip install --report`` files of ``kmsenvelope`` alone and then of ``kmsenvelope[EXTRAS]``.
Checks that every kmsenvelope distribution came from the wheels in DIST (not from an index),
that installing the providers left ``cryptography`` where the core alone put it, and that the
installed ``kmsenvelope`` (not the checkout) lists every provider's schemes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

PROVIDER_DISTRIBUTIONS = {
    "kmsenvelope-aws",
    "kmsenvelope-azure",
    "kmsenvelope-gcp",
    "kmsenvelope-pkcs11",
    "kmsenvelope-vault",
}
SCHEMES = {"local", "aws-kms", "azure-kv", "gcp-kms", "pkcs11", "aws-cloudhsm", "vault-transit"}


def _installed(report: Path) -> dict[str, dict[str, Any]]:
    """What a pip report installed: normalized name -> its entry."""
    doc = json.loads(report.read_text(encoding="utf-8"))
    return {item["metadata"]["name"].lower().replace("_", "-"): item for item in doc["install"]}


def _from_dist(item: dict[str, Any], dist: Path) -> bool:
    url = urlsplit(item["download_info"]["url"])
    return url.scheme == "file" and Path(unquote(url.path)).parent.resolve() == dist.resolve()


def main(dist: Path, core_report: Path, full_report: Path) -> None:
    problems: list[str] = []
    core, full = _installed(core_report), _installed(full_report)
    for name, installed in (("kmsenvelope", core), *((p, full) for p in PROVIDER_DISTRIBUTIONS)):
        item = installed.get(name)
        if item is None:
            problems.append(f"{name} was not installed")
        elif not _from_dist(item, dist):
            problems.append(f"{name} came from {item['download_info']['url']}, not {dist}")
    chosen = core.get("cryptography", {}).get("metadata", {}).get("version")
    if "cryptography" in full or version("cryptography") != chosen:
        problems.append(
            f"installing the providers moved cryptography from {chosen} to "
            f"{version('cryptography')}: align the cryptography range in every pyproject.toml"
        )
    with tempfile.TemporaryDirectory() as cwd:  # away from the checkout's src/
        env = {k: v for k, v in os.environ.items() if not k.startswith("KMSENVELOPE_")}
        where = subprocess.run(
            [sys.executable, "-c", "import kmsenvelope; print(kmsenvelope.__file__)"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if "site-packages" not in where:
            problems.append(f"kmsenvelope was imported from {where}, not the installed wheel")
        listed = subprocess.run(
            [sys.executable, "-m", "kmsenvelope", "providers", "--json"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    missing = SCHEMES - {row["scheme"] for row in json.loads(listed)}
    if missing:
        problems.append(f"`kmsenvelope providers` does not list {', '.join(sorted(missing))}")
    if problems:
        sys.exit("wheels: " + "; ".join(problems))
    print(
        f"wheels: all {1 + len(PROVIDER_DISTRIBUTIONS)} installed from {dist}; "
        f"cryptography stays {chosen}; schemes OK"
    )


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
