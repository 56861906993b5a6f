"""Developer tasks: ``nox -s demo``, ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``,
``nox -s wheels``, ``nox -s bench``. Each session builds its own virtualenv from PyPI."""

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
TEST_DEPS = [
    "pytest>=8",
    "hypothesis>=6",
    "pytest-timeout",
    "moto[server]>=5",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "psycopg[binary]>=3.1",  # the postgresql:// store (kmsenvelope[postgres])
    "dask[distributed]>=2024.1",  # migrate --dask (kmsenvelope[dask])
]
TYPE_DEPS = [
    "mypy>=1.10",
    "pytest>=8",
    "boto3-stubs[kms]>=1.34",
    "psycopg[binary]>=3.1",
    "dask[distributed]>=2024.1",
]


def _install_project(session: nox.Session, *, providers: bool = True) -> None:
    editable = ["-e", "."]
    if providers:
        for path in PROVIDERS:
            editable += ["-e", path]
    session.install(*editable)


# Debian packages the PKCS#11 tests use, by the command that shows each is installed: SoftHSM2
# (the token) and opensc (pkcs11-tool, for the key-creation commands docs/providers/pkcs11.md
# documents). CI's .ci/run installs the same two.
PKCS11_TOOLS = {"softhsm2-util": "softhsm2", "pkcs11-tool": "opensc"}


def _ensure_pkcs11_tools(session: nox.Session) -> None:
    """Install SoftHSM2 and opensc with apt-get when missing, so no PKCS#11 test skips."""
    missing = [package for command, package in PKCS11_TOOLS.items() if not shutil.which(command)]
    if missing:
        _apt_install(session, missing)


# Azurite, the Azure Blob Storage emulator the az:// store's tests start: from npm into
# .cache/npm (git-ignored), where tests/services/azurite.py looks. 3.35.0 is the newest release
# that runs on Node.js 20 (later ones need 22).
AZURITE = "azurite@3.35.0"
AZURITE_PREFIX = ROOT / ".cache" / "npm"


def _sudo(session: nox.Session, why: str) -> list[str]:
    """``[]`` as root, ``["sudo"]`` where sudo exists; otherwise stop and say what to install."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo"]
    session.error(why)
    return []  # not reached: session.error raises


def _apt_install(session: nox.Session, packages: list[str]) -> None:
    sudo = _sudo(session, f"the tests need: apt-get install {' '.join(packages)}")
    session.run(*sudo, "apt-get", "update", "-q", external=True)
    apt_get = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    session.run(*apt_get, "install", "-y", "-q", *packages, external=True)


def _has_postgres() -> bool:
    """Whether initdb is on PATH or where Debian's postgresql package puts it."""
    return bool(shutil.which("initdb")) or any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def _ensure_store_services(session: nox.Session) -> None:
    """PostgreSQL (Debian's, for the postgresql:// store's throwaway clusters) and Azurite (npm,
    for the az:// store), installed when missing so that no store test skips."""
    missing = [] if _has_postgres() else ["postgresql"]
    if not shutil.which("npm"):
        missing += ["nodejs", "npm"]
    if missing:
        _apt_install(session, missing)
    if not (AZURITE_PREFIX / "node_modules" / ".bin" / "azurite-blob").exists():
        session.run(
            "npm", "install", "--no-audit", "--no-fund", "--prefix", str(AZURITE_PREFIX),
            AZURITE, external=True,
        )  # fmt: skip


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, every provider included, against local emulators."""
    if any("pkcs11" in p for p in PROVIDERS):
        _ensure_pkcs11_tools(session)
    _ensure_store_services(session)
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


@nox.session(reuse_venv=False)  # the core must install into an empty virtualenv
def wheels(session: nox.Session) -> None:
    """Build the wheels (the core and every provider), install them into this fresh virtualenv
    with every extra (the extras resolve from the built wheels through --find-links), then run
    the demo.

    Catches an extra naming a distribution that is not built, a wheel missing a module or its
    entry point, and a provider that moves ``cryptography`` away from what the core chose.
    """
    tmp = Path(session.create_tmp())
    dist = tmp / "wheels"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build>=1")
    for project in (".", *PROVIDERS):  # sdist first, then the wheel from the unpacked sdist
        session.run("python", "-m", "build", "--quiet", "--outdir", str(dist), project)
    find = ["--find-links", str(dist)]
    core, full = tmp / "core.json", tmp / "full.json"
    session.install(*find, "--report", str(core), "kmsenvelope")  # the core alone first
    extras = ",".join(sorted(Path(p).name for p in PROVIDERS))
    session.install(*find, "--report", str(full), f"kmsenvelope[{extras}]")
    session.run("python", "-m", "pip", "check")
    session.run("python", "scripts/check_wheels.py", str(dist), str(core), str(full))
    session.run("python", "scripts/demo.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): ratios against baselines measured in the same run."""
    _install_project(session)
    session.install("-r", "benchmarks/requirements.txt")
    session.run("python", "-m", "benchmarks", *session.posargs)
