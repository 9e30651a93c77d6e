"""What OpenLearning declares to the core (portal.platforms.registry)."""

from __future__ import annotations

from portal.jobs import Kind
from portal.platforms import PlatformSpec
from portal.platforms.openlearning import jobs, routes, samples, settings
from portal.platforms.openlearning.platform import OpenLearningPlatform
from portal.platforms.openlearning.tokens import KEY_SETTINGS


def brand_source(order) -> str | None:
    """An order's brand source is the institution that sent the learner."""
    return str((order.platform_data or {}).get("institution") or "") or None


def apply_sandbox_defaults(settings, environ, instance_path: str) -> dict:
    """PORTAL_SANDBOX=1: the stand-in's key, institution, API and signing key
    (portal/sandbox/openlearning_api.py), as changes by setting name. Here, in the wiring, not in
    settings.py: the signing key is the stand-in's."""
    from portal.sandbox.openlearning_api import sandbox_key_pair

    changes: dict = {}
    if not settings.openlearning_api_key:
        changes["OPENLEARNING_API_KEY"] = "sandbox-openlearning-key"
    if not settings.openlearning_audience:
        changes["OPENLEARNING_AUDIENCE"] = "sandbox-institution"
    if "PORTAL_OPENLEARNING_API_BASE" not in environ:
        changes["OPENLEARNING_API_BASE"] = settings.public_url + "/sandbox/openlearning/v2.2"
    if not any(getattr(settings, name.lower()) for name in KEY_SETTINGS):
        # tokens are verified with the stand-in's key unless a key source is configured
        changes["OPENLEARNING_PUBLIC_KEY"] = sandbox_key_pair(instance_path)[1]
    return changes


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
    sandbox_defaults=apply_sandbox_defaults,
    sandbox_stand_in="portal.sandbox.openlearning_api",
    brand_source=brand_source,
    brand_source_help="an OpenLearning institution id",
    preview_samples=samples.preview_samples,
    job_kinds={"purge_used_tokens": Kind(jobs.run_purge_tokens, None, 3600)},
)
