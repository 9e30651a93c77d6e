"""The dependency lock: constraints.txt pins every package requirements*.txt pull in, at the pins
those files choose, and it is what this environment runs (the Makefile and CI install with it)."""

from __future__ import annotations

from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def requirement_lines(name: str) -> list[str]:
    lines = []
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            lines += requirement_lines(line.removeprefix("-r ").strip())
        else:
            lines.append(line)
    return lines


@cache
def pins(name: str) -> dict[str, str]:
    found = {}
    for line in requirement_lines(name):
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{name}: {line} is not pinned with =="
        found[canonicalize_name(requirement.name)] = specifier.version
    return found


@cache
def closure() -> frozenset[str]:
    """Every distribution requirements-dev.txt reaches, by installed metadata and markers."""
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    todo = [(Requirement(line), "") for line in requirement_lines("requirements-dev.txt")]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        extras = requirement.extras or {""}
        for wanted in extras | {""}:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            names.add(name)
            for line in metadata.distribution(name).requires or []:
                todo.append((Requirement(line), wanted))
    return frozenset(names)


def test_every_pin_in_the_requirement_files_is_the_locked_one():
    locked = pins("constraints.txt")
    chosen = pins("requirements-dev.txt")
    assert {"flask", "pytest"} <= set(chosen)  # both files were read
    differ = {name: (version, locked.get(name)) for name, version in chosen.items()}
    assert {n: v for n, v in differ.items() if v[0] != v[1]} == {}


def test_the_lock_holds_every_package_the_requirements_pull_in():
    locked = pins("constraints.txt")
    reached = closure()
    assert {"werkzeug", "jinja2", "itsdangerous", "urllib3", "greenlet"} <= reached
    assert sorted(reached - set(locked)) == []


def test_this_environment_runs_the_locked_versions():
    locked = pins("constraints.txt")
    reached = closure()
    installed = {name: metadata.version(name) for name in reached}
    assert {n: (v, locked.get(n)) for n, v in installed.items() if v != locked.get(n)} == {}
