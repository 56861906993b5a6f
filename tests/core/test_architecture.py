"""The arrows of docs/architecture.md, checked: each room imports only rooms below it, the core
never imports a provider or a cloud SDK, an optional dependency of the core (psycopg) only
lazily in its one module, the local provider is a plugin like any other, and nothing imports
the deprecated module shims. A new module must be given a room here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "kmsenvelope"
ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"

# Rooms, lowest first: a module may import its own room or any room below it, never above.
ROOMS: list[tuple[str, tuple[str, ...]]] = [
    ("boundary", ("errors", "kek")),
    ("format", ("format", "settings", "safe_files", "durability")),
    ("pipeline and configuration", ("pipeline", "config", "memory")),
    ("plugin host and trust", ("plugins", "hooks", "registration", "trust", "cache", "auditing")),
    ("engine", ("engine", "inspection", "known_headers")),
    ("operations", ("rewrapping", "hazmat", "conformance")),
    ("local provider and migration", ("local", "migrate")),
    ("recipes", ("__init__",)),
    ("command line", ("cli", "__main__")),
]
SHIMS = ("header", "stream", "armor", "kdf")  # deprecated re-exports of format/ and pipeline
FOREIGN = (
    "boto3",
    "botocore",
    "azure",
    "msal",
    "pkcs11",
    "google",
    "grpc",
    "hvac",
    "kmsenvelope_aws",
    "kmsenvelope_azure",
    "kmsenvelope_pkcs11",
)
# Optional dependencies of core modules (an extra installs each): imported by their module only,
# and only inside a function, when that store is opened -- never by ``import kmsenvelope``.
LAZY = {
    "psycopg": ("migrate.postgres_store",),
    "dask": ("migrate.distributed",),
    "distributed": ("migrate.distributed",),
}


def _room_of(module: str) -> int | None:
    """The index in ROOMS of ``module`` (dotted, relative to kmsenvelope)."""
    head = module.split(".")[0]
    for index, (_name, members) in enumerate(ROOMS):
        if head in members:
            return index
    return None


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Every module ``module`` imports: ``kmsenvelope.X`` as ``X``, others by full name."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if module == "__init__":
        package = []
    type_only = {  # imports under ``if TYPE_CHECKING:`` are annotations, not arrows
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
                found.append((f"kmsenvelope.{target}".rstrip("."), node.lineno))
            elif node.module:
                found.append((node.module, node.lineno))
    out = []
    for name, line in found:
        if name == "kmsenvelope":
            out.append(("__init__", line))
        elif name.startswith("kmsenvelope."):
            out.append((name.removeprefix("kmsenvelope."), line))
        else:
            out.append((name, line))
    return out


MODULES = _modules()


def test_every_module_has_a_room() -> None:
    homeless = [m for m in MODULES if _room_of(m) is None and m.split(".")[0] not in SHIMS]
    assert homeless == [], "give these modules a room in ROOMS and docs/architecture.md"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    path = MODULES[module]
    mine = _room_of(module)
    problems = []
    for target, line in _imports(module, path):
        top = target.split(".")[0]
        if top in LAZY:
            continue  # test_optional_dependencies_are_imported_lazily
        if top in FOREIGN:
            problems.append(
                f"{path.name}:{line} imports {target}: the core never imports a provider"
            )
            continue
        if target in MODULES or top in {m.split(".")[0] for m in MODULES}:
            if top in SHIMS and module.split(".")[0] not in SHIMS:
                problems.append(f"{path.name}:{line} imports the deprecated shim {target}")
                continue
            theirs = _room_of(target)
            if mine is None or theirs is None:
                continue
            if theirs > mine:
                problems.append(
                    f"{path.name}:{line} ({ROOMS[mine][0]}) imports {target} "
                    f"({ROOMS[theirs][0]}), a room above it"
                )
    assert problems == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room_of(m) is not None))
def test_only_the_local_provider_and_the_cli_know_the_local_provider(module: str) -> None:
    if module.split(".")[0] in ("local", "cli", "__main__"):
        return
    targets = [t for t, _line in _imports(module, MODULES[module])]
    assert not [t for t in targets if t == "local" or t.startswith("local.")], module


def _eager_imports(path: Path) -> set[int]:
    """Line numbers of the imports that run when the module is imported: not inside a function
    and not under ``if TYPE_CHECKING:``."""
    lines: set[int] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
                for inner in child.orelse:
                    visit(inner)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                lines.add(child.lineno)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return lines


@pytest.mark.parametrize("module", sorted(MODULES))
def test_optional_dependencies_are_imported_lazily(module: str) -> None:
    path = MODULES[module]
    eager = _eager_imports(path)
    problems = []
    for target, line in _imports(module, path):
        top = target.split(".")[0]
        if top not in LAZY:
            continue
        if module not in LAZY[top]:
            problems.append(f"{path.name}:{line} imports {target}: only {LAZY[top]} may")
        elif line in eager:
            problems.append(f"{path.name}:{line} imports {target} on import, not when used")
    assert problems == []


def test_the_lazy_check_sees_an_eager_import(tmp_path: Path) -> None:
    fake = tmp_path / "store.py"
    fake.write_text(
        "from typing import TYPE_CHECKING\nimport psycopg\nif TYPE_CHECKING:\n"
        "    import psycopg.sql\ndef f():\n    import psycopg.pq\n"
    )
    assert _eager_imports(fake) == {1, 2}


def test_importing_kmsenvelope_and_its_stores_imports_no_optional_dependency() -> None:
    code = (
        "import sys, kmsenvelope, kmsenvelope.cli, kmsenvelope.migrate.plugin, "
        "kmsenvelope.migrate.postgres_store\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(LAZY)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_room_is_in_the_architecture_page() -> None:
    text = ARCHITECTURE.read_text()
    for name, members in ROOMS:
        assert name in text, name
        for member in members:
            if member not in ("__init__", "__main__"):
                assert f"`{member}" in text, member


def test_the_checker_sees_a_wrong_arrow(tmp_path: Path) -> None:
    """A planted upward import (format importing the engine) is reported."""
    fake = tmp_path / "header.py"
    fake.write_text("from ..engine import Engine\n")
    assert ("engine", 1) in _imports("format.header", fake)
    format_room = _room_of("format.header")
    engine_room = _room_of("engine")
    assert format_room is not None
    assert engine_room is not None
    assert engine_room > format_room
