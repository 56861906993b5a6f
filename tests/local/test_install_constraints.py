"""kmsenvelope and its providers declare one ``cryptography`` range, which every dependency of
theirs accepts in full: installing a provider then never moves ``cryptography`` away from the
version the core alone chose (the Azure provider once took it from 51 down to 50).

The dependencies' ranges come from the installed distributions' metadata, walked from each
pyproject.toml's ``dependencies``; ``nox -s wheels`` checks the same thing by installing.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECTS = [ROOT / "pyproject.toml", *sorted(ROOT.glob("providers/*/pyproject.toml"))]
OURS = "kmsenvelope"
# Every release number a cryptography range could plausibly distinguish.
VERSIONS = [Version(f"{a}.{b}.{c}") for a in range(1, 100) for b in range(10) for c in range(4)]


def _declared() -> dict[str, list[Requirement]]:
    """Each of our distributions -> its runtime requirements, from its pyproject.toml."""
    out = {}
    for path in PYPROJECTS:
        project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
        out[project["name"]] = [Requirement(r) for r in project["dependencies"]]
    return out


def _ranges_required_by_dependencies() -> dict[str, SpecifierSet]:
    """``name (required by …) -> its cryptography range`` for every installed dependency of
    our distributions (transitively, extras off)."""
    found: dict[str, SpecifierSet] = {}
    seen: set[str] = set()
    todo = [(r, owner) for owner, reqs in _declared().items() for r in reqs]
    while todo:
        requirement, parent = todo.pop()
        name = canonicalize_name(requirement.name)
        if name.startswith(OURS) or name == "cryptography" or name in seen:
            continue
        seen.add(name)
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            raise AssertionError(f"{name} (needed by {parent}) is not installed") from None
        for line in lines:
            child = Requirement(line)
            if child.marker is not None and not child.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(child.name) == "cryptography":
                found[f"{name} (needed by {parent})"] = child.specifier
            else:
                todo.append((child, name))
    return found


def test_one_cryptography_range_everywhere():
    ranges = {
        name: str(r.specifier)
        for name, reqs in _declared().items()
        for r in reqs
        if canonicalize_name(r.name) == "cryptography"
    }
    assert OURS in ranges
    assert len(set(ranges.values())) == 1, ranges


def test_every_dependency_accepts_the_whole_range():
    (ours,) = {
        r.specifier
        for reqs in _declared().values()
        for r in reqs
        if canonicalize_name(r.name) == "cryptography"
    }
    theirs = _ranges_required_by_dependencies()
    assert theirs, "no dependency declares a cryptography range: the walk found nothing"
    ours_versions = [v for v in VERSIONS if v in ours]
    assert ours_versions
    for who, specifier in theirs.items():
        refused = [str(v) for v in ours_versions if v not in specifier]
        assert not refused, (
            f"{who} requires cryptography{specifier}, but ours is {ours}: it refuses "
            f"{refused[0]}…{refused[-1]}"
        )
