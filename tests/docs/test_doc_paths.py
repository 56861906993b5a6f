"""Issue 11, item 10: docs/performance.md cited ``benchmarks/results/latest.json``, which is
not in the repository.

Every repository path the README and docs/ cite (in backticks, or as a README link) must be in
a clean clone: present and not ignored by git. A file that a command writes and that is not
committed may still be named, if the paragraph naming it says it is "not committed".
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = r"(?:benchmarks|docs|examples|providers|src|tests|\.ci)/[^`\s)]*"
_CITED = re.compile(rf"`({TOP})`|\]\(({TOP})\)")
NOT_COMMITTED = "not committed"


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _citations(doc: Path) -> list[tuple[str, str]]:
    """``(path, paragraph)`` for each repository path the document cites."""
    found = []
    for paragraph in re.split(r"\n\s*\n", doc.read_text(encoding="utf-8")):
        for match in _CITED.finditer(paragraph):
            found.append((match.group(1) or match.group(2), paragraph))
    return found


def _ignored(path: str) -> bool:
    """Whether git ignores ``path`` (so a clean clone does not have it)."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", path],
        capture_output=True,
        check=False,
    )
    if done.returncode not in (0, 1):
        pytest.fail(f"git check-ignore failed: {done.stderr!r}")
    return done.returncode == 0


@pytest.fixture(autouse=True)
def _git_checkout() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know what is committed")


def test_the_documents_cite_repository_paths() -> None:
    """The check below has something to check (the pattern still matches the docs)."""
    cited = {path for doc in _documents() for path, _ in _citations(doc)}
    assert "benchmarks/results/latest.png" in cited
    assert "docs/format.md" in cited


@pytest.mark.parametrize("doc", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_paths_are_in_a_clean_clone_or_said_not_to_be(doc: Path) -> None:
    """A cited path is committed, or its paragraph says it is not."""
    missing = [
        path
        for path, paragraph in _citations(doc)
        if (not (ROOT / path).exists() or _ignored(path))
        and NOT_COMMITTED not in " ".join(paragraph.split())
    ]
    assert not missing, f"{doc.name} cites paths a clean clone does not have: {missing}"
