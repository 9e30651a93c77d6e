"""OpenLearning's External Enrolment URL (`POST /openlearning/enrol`) and the page after
enrolment."""

from __future__ import annotations

import logging

from flask import Blueprint, redirect, request, url_for
from sqlalchemy.dialects import postgresql, sqlite

from portal import orders
from portal.checkout import CheckoutError, open_order
from portal.db import db
from portal.i18n import N_
from portal.models import Order, OrderState, UsedToken
from portal.orders import timeline
from portal.platforms.openlearning.keys import KeySourceUnavailable
from portal.platforms.openlearning.platform import OpenLearningPlatform
from portal.platforms.openlearning.tokens import PLATFORM, REFUSALS, EnrolmentToken, TokenRefused

log = logging.getLogger("portal.openlearning")


def _remember_token(token: EnrolmentToken, order) -> None:
    """Record the jti as used by this order (a second, concurrent first post records nothing)."""
    with db.transaction() as session:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        result = session.execute(
            dialect.insert(UsedToken)
            .values(jti=token.jti, issuer=PLATFORM, order_id=order.id, expires_at=token.expires_at)
            .on_conflict_do_nothing(index_elements=["jti"])
        )
        if result.rowcount == 1:
            timeline.record(
                order.id,
                "note",
                f"OpenLearning enrolment token accepted ({token.kind})",
                {
                    "jti": token.jti,
                    "user": token.user,
                    "class": token.class_id,
                    "program": token.program,
                },
                session=session,
            )


def _order_of_token(jti: str):
    """The order a used token was spent on, when it was spent on an order opened by an earlier
    token of the same learner and purchase."""
    with db.reader() as session:
        used = session.get(UsedToken, jti)
        if used is None or used.order_id is None:
            return None
        return session.get(Order, used.order_id)


def _token_used(jti: str) -> bool:
    with db.reader() as session:
        return session.get(UsedToken, jti) is not None


bp = Blueprint("openlearning", __name__)


@bp.get("/enrol")
def enrol_page():
    from portal.errors import render_error

    body, status = render_error(
        405,
        N_("Please start from your course page"),
        N_(
            "This address receives enrolment requests from OpenLearning’s “Join now” button and "
            "cannot be opened directly. Please go back to the course page on OpenLearning and "
            "choose “Join now” again."
        ),
    )
    return body, status, {"Allow": "POST"}


@bp.post("/enrol")
def enrol():
    """OpenLearning's External Enrolment URL: a cross-site form POST with `jwt`, authenticated by
    the token's signature instead of a CSRF token."""
    from portal.views import learner_locale, services, show_order

    portal = services()
    platform: OpenLearningPlatform = portal.platform(PLATFORM)
    raw_token = request.form.get("jwt", "")
    if not raw_token.strip():
        # Malformed whatever the configuration: a 400, before "not set up" is even considered.
        log.warning("OpenLearning enrolment posted without a token")
        raise CheckoutError(*REFUSALS["missing"])
    if platform.verifier is None:
        raise CheckoutError(
            503,
            N_("Enrolment is not available here yet"),
            N_(
                "Paying for OpenLearning courses is not set up on this site. Please go back to the "
                "course page and try again later, or contact support."
            ),
        )
    try:
        token = platform.verifier.verify(raw_token, portal.allowed_redirect)
    except TokenRefused as refusal:
        log.warning("OpenLearning token refused (%s): %s", refusal.reason, refusal.detail)
        raise CheckoutError(
            refusal.status, refusal.title, refusal.message, back_url=refusal.back_url
        ) from None
    except KeySourceUnavailable as exc:
        log.error("OpenLearning token not checked: %s", exc)
        raise CheckoutError(
            503,
            N_("Enrolment is temporarily unavailable"),
            N_(
                "We could not check your enrolment request with OpenLearning just now. Please go "
                "back to the course page and try again in a few minutes; you have not been "
                "charged."
            ),
        ) from exc

    order = orders.find(PLATFORM, token.jti) or _order_of_token(token.jti)
    if order is None and _token_used(token.jti):
        # A simultaneous post of this same token may have opened its order and spent the token
        # since the look-up above (the order commits before the token does): look again.
        order = orders.find(PLATFORM, token.jti) or _order_of_token(token.jti)
        if order is None:
            raise CheckoutError(*REFUSALS["used"], back_url=token.redirect_url)
    if order is None:
        order = open_order(token.draft(learner_locale()))
        _remember_token(token, order)
        if order.platform_ref != token.jti:
            timeline.record(
                order.id,
                "note",
                "OpenLearning: another Join now for the same learner and class or program; "
                "this order is shown instead of opening a second one",
                {"jti": token.jti},
            )
    else:
        timeline.record(order.id, "note", "OpenLearning enrolment token posted again")
    # Every answer to the POST is a 303 to a page the browser GETs: Back from Stripe's page then
    # shows that page again, never the browser's "Confirm Form Resubmission". The reference in
    # those addresses is the order's capability, as on every learner page (status, return).
    if order.state == OrderState.FULFILLED:
        return redirect(url_for("openlearning.enrolled", reference=order.reference), code=303)
    if order.is_paid or order.state in {OrderState.PROCESSING, OrderState.CANCELLED}:
        return show_order(order)
    return redirect(url_for("orders.review", reference=order.reference), code=303)


@bp.get("/orders/<reference>/enrolled")
def enrolled(reference):
    """ "You're already enrolled": where a Join now for a course the learner has paid for lands."""
    from portal.branding.render import render_learner
    from portal.views import learner_locale, services, view_reference

    order = orders.view(view_reference(reference))
    if order.platform != PLATFORM or order.state != OrderState.FULFILLED:
        return redirect(url_for("orders.review", reference=order.reference), code=303)
    return render_learner(
        "openlearning/already_enrolled.html",
        order=order,
        locale=order.locale or learner_locale(),
        continue_url=services().allowed_redirect(order.redirect_url),
    )
