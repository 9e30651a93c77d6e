"""The learner error pages' titles and messages, by HTTP status: shown by portal.errors, and by
the branding console's samples of those pages. Marked for translation; translated when shown."""

from __future__ import annotations

from portal.i18n import N_

MESSAGES = {
    400: (N_("Something is wrong with this request"), N_("Please go back and try again.")),
    403: (N_("Not allowed"), N_("This page is not available to you.")),
    404: (N_("Page not found"), N_("We could not find what you were looking for.")),
    405: (
        N_("Not allowed"),
        N_("This page cannot be used that way. Please go back and try again."),
    ),
    413: (N_("Too large"), N_("The request was too large.")),
    429: (N_("Too many requests"), N_("Please wait a moment and try again.")),
    500: (
        N_("Something went wrong"),
        N_(
            "An unexpected error happened on our side. You have not been "
            "charged twice; please try again in a few minutes."
        ),
    ),
    503: (N_("Temporarily unavailable"), N_("Please try again in a few minutes.")),
}
