"""What OpenLearning declares to the core (portal.platforms.registry)."""

from __future__ import annotations

from portal.jobs import Kind
from portal.platforms import PlatformSpec
from portal.platforms.openlearning import jobs, routes, samples, settings
from portal.platforms.openlearning.platform import OpenLearningPlatform


def brand_source(order) -> str | None:
    """An order's brand source is the institution that sent the learner."""
    return str((order.platform_data or {}).get("institution") or "") or None


SPEC = PlatformSpec(
    name=OpenLearningPlatform.name,
    label=OpenLearningPlatform.label,
    factory=OpenLearningPlatform,
    settings=settings.SETTINGS,
    blueprint=routes.bp,
    url_prefix="/openlearning",
    csrf_exempt="a cross-site POST from OpenLearning, authenticated by its JWT",
    entry_endpoints=("openlearning.enrol",),  # the External Enrolment URL
    learner_paths=("/openlearning/",),
    sandbox_defaults=settings.apply_sandbox_defaults,
    sandbox_stand_in="portal.sandbox.openlearning_api",
    brand_source=brand_source,
    brand_source_help="an OpenLearning institution id",
    preview_samples=samples.preview_samples,
    job_kinds={"purge_used_tokens": Kind(jobs.run_purge_tokens, None, 3600)},
)
