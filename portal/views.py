"""Learner-facing order pages (review, pay, return, status, cancel) and the health check.

Views stay thin: they parse input, call one function of `portal.checkout`, and render or redirect.
"""

from __future__ import annotations

import re

from flask import (
    Blueprint,
    abort,
    current_app,
    jsonify,
    redirect,
    request,
    url_for,
)

from portal import checkout, i18n, orders, receipts
from portal.branding.render import render_learner
from portal.db import db
from portal.models import Order, OrderState
from portal.money import format_money
from portal.platforms import registry

bp = Blueprint("orders", __name__)

REFERENCE = re.compile(r"ord_[A-Za-z0-9_-]{10,40}")


def services():
    return current_app.extensions["portal"]


def learner_locale(platform_locale: str | None = None) -> str:
    """The learner's locale (stored on the order: money, dates, Stripe's page, the page's
    language): the platform's when it sends one, else the browser's `Accept-Language`."""
    default = services().settings.default_locale
    return i18n.negotiate(platform_locale, request.accept_languages, default)


def money(order: Order, amount_minor: int | None, locale: str | None = None) -> str:
    return format_money(amount_minor or 0, order.currency, locale or order.locale or "en")


def view_reference(reference: str) -> str:
    """An order reference from a URL, or a 404 before any look-up."""
    if not REFERENCE.fullmatch(reference):
        abort(404)
    return reference


_reference = view_reference


def render_review(order: Order, *, cancelled: bool = False, status: int = 200):
    settings = services().settings
    locale = order.locale or learner_locale()
    country = request.args.get("country") or None
    try:
        quote = checkout.quote_tax(settings, order, country)
    except checkout.CheckoutError:
        quote = checkout.quote_tax(settings, order, None)
    promo_saving = None
    if order.promo_code and order.list_unit_minor is not None:
        promo_saving = order.list_unit_minor * order.quantity - order.amount_minor
        if promo_saving <= 0:
            promo_saving = None
    return (
        render_learner(
            "review.html",
            order=order,
            locale=locale,
            quote=quote,
            countries=checkout.tax_countries(settings),
            promo_saving=promo_saving,
            cancelled=cancelled,
            total_minor=order.amount_minor + quote.amount_minor,
            receipt_by=receipts.sender(settings, order),
        ),
        status,
    )


def render_order_review(order: Order, *, cancelled: bool = False):
    """The review page for the order's platform: its own where its spec has one (Cleeng's: its
    offer, renewal period and tax-included breakdown), the common one for the rest."""
    spec = registry.spec(order.platform)
    if spec is not None and spec.render_review is not None:
        return spec.render_review(order, cancelled=cancelled)
    return render_review(order, cancelled=cancelled)


def show_order(order: Order):
    return _follow(checkout.next_for_status(services(), order))


def _follow(next_step: checkout.Next):
    if next_step.redirect_url:
        return redirect(next_step.redirect_url, code=303)
    order = next_step.order
    if next_step.page == "review":
        return render_order_review(order)
    return redirect(url_for("orders.status", reference=order.reference), code=303)


@bp.get("/orders/<reference>")
def review(reference):
    order = orders.view(_reference(reference))
    if order.is_paid or order.state in {OrderState.PROCESSING, OrderState.CANCELLED}:
        return show_order(order)
    return render_order_review(order)


@bp.get("/orders/<reference>/cancelled")
def cancelled(reference):
    """Stripe's cancel_url: the learner chose "back" on the payment page. For a platform whose
    customers go straight back to it (the merchant API's cancel_url), the order is cancelled and
    the customer sent on at once; otherwise the review page is shown again."""
    order = orders.view(_reference(reference))
    if order.is_paid or order.state in {OrderState.PROCESSING, OrderState.CANCELLED}:
        return show_order(order)
    if services().platform(order.platform).back_leaves(order):
        return _follow(checkout.cancel_order(services(), order.reference))
    return render_order_review(order, cancelled=True)


@bp.post("/orders/<reference>/pay")
def pay(reference):
    country = request.form.get("country") or None
    next_step = checkout.start_payment(services(), _reference(reference), country)
    return _follow(next_step)


@bp.post("/orders/<reference>/cancel")
def cancel(reference):
    return _follow(checkout.cancel_order(services(), _reference(reference)))


@bp.get("/orders/<reference>/return")
def stripe_return(reference):
    """Stripe's success_url. The session id in the query is only a hint; Stripe is asked."""
    next_step = checkout.handle_return(
        services(), _reference(reference), request.args.get("session_id")
    )
    return _follow(next_step)


@bp.get("/orders/<reference>/status")
def status(reference):
    next_step = checkout.refresh_status(services(), _reference(reference))
    if next_step.redirect_url:
        return redirect(next_step.redirect_url, code=303)
    order = next_step.order
    # PAYING here: the learner was on Stripe's page and the payment is not confirmed yet (the
    # return page could not reach Stripe, or a webhook is on its way). Keep checking.
    waiting = order.state in {OrderState.PAID, OrderState.PROCESSING, OrderState.PAYING}
    locale = order.locale or learner_locale()
    # The page checks again by itself (no JavaScript), quickly at first, then less often; the
    # learner can switch that off (WCAG 2.2.1, timing adjustable) and check by hand.
    auto = waiting and request.args.get("auto") != "0"
    check = request.args.get("check", "0")
    check = min(int(check), 10_000) if check.isdigit() else 0
    interval = refresh_interval(check)
    response = current_app.make_response(
        render_learner(
            "status.html",
            order=order,
            locale=locale,
            waiting=waiting,
            auto=auto,
            interval=interval,
            continue_url=services().allowed_redirect(order.redirect_url),
        )
    )
    if auto:
        next_url = url_for("orders.status", reference=order.reference, check=check + 1)
        response.headers["Refresh"] = f"{interval}; url={next_url}"
    response.headers["Cache-Control"] = "no-store"
    return response


def refresh_interval(check: int) -> int:
    """Seconds until the status page checks again: 3 s for the first minute or so, then 10 s,
    then 30 s, so a long platform outage does not keep a phone busy."""
    if check < 20:
        return 3
    return 10 if check < 80 else 30


@bp.get("/healthz")
def healthz():
    try:
        db.ping()
    except Exception:  # noqa: BLE001 - any failure means "not healthy"
        current_app.logger.exception("health check: database unreachable")
        return jsonify(status="unavailable", database="unreachable"), 503
    return jsonify(status="ok", database="ok")
