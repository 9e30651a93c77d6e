"""The installed platforms: the only list of them. Each entry is a platform package whose `spec`
module declares a `portal.platforms.PlatformSpec` as `SPEC`; the core builds its lists from
these (`installed()`), so a new platform is one package and one line here.

The packages are named, not imported, here (as Django names its installed apps): the core reads
the registry at run time, and the packages import the core, so importing them from the core's
modules would tie both in a knot.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

from portal.platforms import PlatformSpec

INSTALLED = (
    "portal.platforms.skilljar",
    "portal.platforms.openlearning",
    "portal.platforms.cleeng",
    "portal.platforms.merchant",
)


@cache
def installed() -> tuple[PlatformSpec, ...]:
    specs = tuple(import_module(f"{package}.spec").SPEC for package in INSTALLED)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two installed platforms share a name: {names}")
    return specs


def spec(name: str) -> PlatformSpec | None:
    return next((spec for spec in installed() if spec.name == name), None)


def names() -> tuple[str, ...]:
    return tuple(spec.name for spec in installed())


def settings() -> tuple:
    """Every platform's `portal.config.Setting`s, in installation order."""
    return tuple(setting for spec in installed() for setting in spec.settings)


def entry_endpoints() -> tuple[str, ...]:
    return tuple(endpoint for spec in installed() for endpoint in spec.entry_endpoints)


def learner_paths() -> tuple[str, ...]:
    return tuple(path for spec in installed() for path in spec.learner_paths)


def job_kinds() -> dict:
    """{kind: portal.jobs.Kind} of every platform."""
    return {kind: job for spec in installed() for kind, job in spec.job_kinds.items()}


def preview_samples() -> list:
    return [
        sample for spec in installed() if spec.preview_samples for sample in spec.preview_samples()
    ]
