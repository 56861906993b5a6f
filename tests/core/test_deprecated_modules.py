"""The old module paths (``kmsenvelope.header``, ``.stream``, ``.armor``, ``.kdf``) still import for
one release: each warns and hands out the very objects of the format/pipeline modules, and
nothing in this repository imports them any more."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIMS = ("kmsenvelope.header", "kmsenvelope.stream", "kmsenvelope.armor", "kmsenvelope.kdf")
NEW_HOMES = (
    "kmsenvelope.format.header",
    "kmsenvelope.format.keyschedule",
    "kmsenvelope.format.chunks",
    "kmsenvelope.format.compact",
    "kmsenvelope.pipeline",
)
# What code imported from the old paths in the previous release: it must keep working.
OLD_NAMES = {
    "kmsenvelope.header": [
        "COMPACT_PREFIX", "DEFAULT_CHUNK_SIZE", "DEFAULT_LIMITS", "DEK_SIZE", "MAC_SIZE",
        "MAGIC", "MAX_CHUNK_SIZE", "MIN_CHUNK_SIZE", "NONCE_SIZE", "TAG_SIZE", "Header",
        "Limits", "check_chunk_size", "derive_keys", "encode_context", "encode_new_header",
        "new_header", "parse_body", "parse_header", "read_header", "validate_context",
    ],
    "kmsenvelope.stream": [
        "ALIGN", "BATCH_BYTES", "BUFFERS", "MAX_WORKERS", "Progress", "SINGLE_FINAL_NONCE", "SLOTS",
        "TAG_SIZE", "chunk_nonce", "decrypt_bytes", "decrypt_payload", "default_workers",
        "encrypt_bytes", "encrypt_payload", "payload_length", "release_buffers",
        "tell_or_none", "wipe",
    ],
    "kmsenvelope.armor": [
        "COMPACT_PREFIX", "SPOOL_IN_MEMORY", "WHITESPACE", "ArmorReader", "ArmorWriter",
        "PrefixedReader", "from_compact", "open_envelope_stream", "spool_compact", "to_compact",
    ],
    "kmsenvelope.kdf": ["hkdf_sha256", "hkdf_sha256_two_blocks", "hmac_sha256"],
}  # fmt: skip


def _fresh_import(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[object, list[warnings.WarningMessage]]:
    """Import ``name`` as if for the first time; return the module and its warnings."""
    monkeypatch.delitem(sys.modules, name, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    return module, caught


@pytest.mark.parametrize("name", SHIMS)
def test_old_path_warns_once_on_import(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _module, caught = _fresh_import(name, monkeypatch)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1, [str(w.message) for w in caught]
    message = str(deprecations[0].message)
    assert message.startswith(f"{name} is deprecated: import from kmsenvelope.")


def test_the_warning_points_at_the_importing_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "kmsenvelope.kdf", raising=False)
    with pytest.warns(DeprecationWarning, match="kmsenvelope.kdf is deprecated") as record:
        import kmsenvelope.kdf  # noqa: F401
    assert Path(record[0].filename).resolve() == Path(__file__).resolve()


@pytest.mark.parametrize("name", SHIMS)
def test_old_path_reexports_the_same_objects(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module, _ = _fresh_import(name, monkeypatch)
    homes = [importlib.import_module(home) for home in NEW_HOMES]
    assert set(OLD_NAMES[name]) <= set(module.__all__)  # type: ignore[attr-defined]
    for attr in OLD_NAMES[name]:
        obj = getattr(module, attr)
        assert any(vars(home).get(attr) is obj for home in homes), f"{name}.{attr}"


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` in ``path`` names, relative imports resolved."""
    inside = path.is_relative_to(ROOT / "src" / "kmsenvelope")
    package = list(path.relative_to(ROOT / "src").parts[:-1]) if inside else []
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if not package:
                    continue
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_nothing_here_imports_an_old_path() -> None:
    shim_files = {ROOT / "src" / Path(*name.split(".")).with_suffix(".py") for name in SHIMS}
    offenders = []
    for top in ("src", "providers", "tests", "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path in shim_files or path.resolve() == Path(__file__).resolve():
                continue
            used = _imported_modules(path) & set(SHIMS)
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in sorted(used)]
    assert offenders == []
