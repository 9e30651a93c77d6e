"""What Cleeng declares to the core (portal.platforms.registry)."""

from __future__ import annotations

from portal.jobs import Kind
from portal.platforms import PlatformSpec
from portal.platforms.cleeng import jobs, review, routes, samples, settings
from portal.platforms.cleeng.platform import CleengPlatform

SPEC = PlatformSpec(
    name=CleengPlatform.name,
    label=CleengPlatform.label,
    factory=CleengPlatform,
    settings=settings.SETTINGS,
    blueprint=routes.bp,
    url_prefix=None,  # /cleeng/... and its webhook, /webhooks/cleeng
    csrf_exempt="GET pages and Cleeng's webhook, authenticated by its HMAC signature",
    entry_endpoints=("cleeng.checkout",),
    learner_paths=("/cleeng/",),
    sandbox_defaults=settings.apply_sandbox_defaults,
    sandbox_stand_in="portal.sandbox.cleeng_api",
    review_template=review.REVIEW_TEMPLATE,
    render_review=review.render_cleeng_review,
    tax="added",  # Cleeng adds its tax to the offer price (or says its total includes it)
    preview_samples=samples.preview_samples,
    job_kinds={
        "cleeng_renewal": Kind(jobs.run_renewal, jobs.give_up_event, None),
        "cleeng_refund": Kind(jobs.run_refund, jobs.give_up_event, None),
        "cleeng_detach": Kind(jobs.run_detach, jobs.give_up_event, None),
    },
)
