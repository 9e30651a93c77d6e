"""What Skilljar declares to the core (portal.platforms.registry)."""

from __future__ import annotations

from portal.platforms import PlatformSpec
from portal.platforms.skilljar import routes, settings
from portal.platforms.skilljar.platform import SkilljarPlatform

SPEC = PlatformSpec(
    name=SkilljarPlatform.name,
    label=SkilljarPlatform.label,
    factory=SkilljarPlatform,
    settings=settings.SETTINGS,
    blueprint=routes.bp,
    url_prefix="/skilljar",
    entry_endpoints=("skilljar.checkout",),  # the Remote Checkout URL
    learner_paths=("/skilljar/",),
    sandbox_defaults=settings.apply_sandbox_defaults,
    sandbox_stand_in="portal.sandbox.skilljar_api",
)
