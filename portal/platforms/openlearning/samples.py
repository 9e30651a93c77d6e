"""OpenLearning's sample for the marketer's preview (portal.branding.samples): the page of a
learner who was already enrolled."""

from __future__ import annotations

from portal.branding.samples import Sample, paid_order


def preview_samples() -> list[Sample]:
    return [
        Sample(
            "already-enrolled",
            "OpenLearning: already enrolled",
            "openlearning/already_enrolled.html",
            paid_order(state="fulfilled", platform="openlearning"),
            {"continue_url": "https://www.openlearning.com/courses/sample"},
        )
    ]
