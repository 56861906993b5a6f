"""Developer tasks: ``nox -s demo``, ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``,
``nox -s bench``. Each session builds its own virtualenv from PyPI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).parent
PROVIDERS = sorted(str(p.parent) for p in ROOT.glob("providers/*/pyproject.toml"))
EXAMPLE_PLUGIN = "tests/fixtures/example_plugin"
TEST_DEPS = ["pytest>=8", "hypothesis>=6", "pytest-timeout", "moto[server]>=5"]
TYPE_DEPS = ["mypy>=1.10", "pytest>=8", "boto3-stubs[kms]>=1.34"]


def _install_project(session: nox.Session, *, providers: bool = True) -> None:
    editable = ["-e", "."]
    if providers:
        for path in PROVIDERS:
            editable += ["-e", path]
    session.install(*editable)


def _ensure_softhsm(session: nox.Session) -> None:
    """The PKCS#11 tests need SoftHSM2 (a Debian package); install it when we can."""
    if shutil.which("softhsm2-util"):
        return
    apt = ["apt-get", "install", "-y", "-q", "softhsm2"]
    if os.geteuid() == 0:
        session.run("apt-get", "update", "-q", external=True)
        session.run(*apt, external=True)
    elif shutil.which("sudo"):
        session.run("sudo", "apt-get", "update", "-q", external=True)
        session.run("sudo", *apt, external=True)
    else:
        session.error("SoftHSM2 is required for the PKCS#11 tests: apt-get install softhsm2")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, every provider included, against local emulators."""
    if any("pkcs11" in p for p in PROVIDERS):
        _ensure_softhsm(session)
    _install_project(session)
    session.install(*TEST_DEPS, EXAMPLE_PLUGIN)
    session.run("pytest", *(session.posargs or ["-q", "-p", "no:cacheprovider"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and every provider."""
    _install_project(session)
    session.install(*TYPE_DEPS)
    session.run("mypy", "--strict", "src", *(f"{p}/src" for p in PROVIDERS))


@nox.session
def demo(session: nox.Session) -> None:
    """End to end on the local software HSM: keystore, key, encrypt, inspect, decrypt, compare."""
    _install_project(session, providers=False)
    session.run("python", "scripts/demo.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): ratios against baselines measured in the same run."""
    _install_project(session)
    session.install("-r", "benchmarks/requirements.txt")
    session.run("python", "-m", "benchmarks", *session.posargs)
