"""Error pages and security headers.

Every error a learner can meet is a branded page (or a JSON error object for API and webhook
clients) that says what to do next; internals never leak, and a 500 rolls nothing back that was
already committed.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from flask import current_app, g, jsonify, request
from flask_wtf.csrf import CSRFError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from portal import checkout, i18n, orders
from portal.checkout import CheckoutError
from portal.config import Settings
from portal.db import db
from portal.error_texts import MESSAGES
from portal.i18n import N_
from portal.models import Order
from portal.money import MoneyError
from portal.platforms import registry

log = logging.getLogger("portal.errors")
ORDER_REFERENCE = re.compile(r"ord_[A-Za-z0-9_-]{10,40}")


def wants_json() -> bool:
    if request.path.startswith(("/api/", "/webhooks/")):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return (
        best == "application/json"
        and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]
    )


def _host(url: str) -> str:
    host = urlsplit(url).hostname or url
    return host.removeprefix("www.")


def known_page(back_url: str | None = None) -> tuple[str | None, str | None]:
    """Where an error page's link goes, and what the link says: the platform's page when the
    portal knows it (the error's own, an allow-listed URL; the order's return address; the page
    the learner came from, when on an allow-listed host), else the brand's home page
    (PORTAL_BRAND_HOME_URL). The link says the site's host. (None, None) when none is known."""
    services = current_app.extensions["portal"]
    candidates = [back_url]
    reference = (request.view_args or {}).get("reference")
    if isinstance(reference, str) and ORDER_REFERENCE.fullmatch(reference):
        try:
            with db.reader() as session:
                order_redirect = session.scalar(
                    select(Order.redirect_url).where(Order.reference == reference)
                )
            candidates.append(order_redirect)
        except Exception:  # noqa: BLE001 - an error page never fails for want of a link
            log.warning("error page: the order's page could not be looked up", exc_info=True)
    referrer = request.referrer
    if referrer and urlsplit(referrer).netloc != request.host:
        candidates.append(referrer)
    for candidate in candidates:
        url = services.allowed_redirect(candidate)
        if url:
            return url, _host(url)
    home = current_app.config["PORTAL"].brand_home_url
    return (home, _host(home)) if home else (None, None)


def render_error(status: int, title: str, message: str, back_url: str | None = None):
    if wants_json():
        return jsonify(error={"code": status, "title": title, "message": message}), status
    back_url, back_label = known_page(back_url)
    from portal.branding.render import render_learner, request_locale

    template = (
        f"errors/{status}.html"
        if status in {400, 403, 404, 405, 500, 503}
        else "errors/generic.html"
    )
    locale = request_locale(current_app.config["PORTAL"])
    # Titles and messages are English in the code (marked with N_, so they are in the catalogue)
    # and in JSON answers; the learner reads them in the page's language.
    language = i18n.language_for(locale)
    return (
        render_learner(
            template,
            locale=locale,
            status=status,
            title=i18n.gettext(language, title),
            message=i18n.gettext(language, message),
            back_url=back_url,
            back_label=back_label,
        ),
        status,
    )


STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"


def form_action_origins(settings: Settings) -> tuple[str, ...]:
    """Where a form on our pages may lead, redirects included (browsers check each hop):
    our origin, Stripe Checkout (and the configured Stripe API base, the stand-in's pay page
    in the sandbox), and the platforms' sites a cancel is sent back to."""
    origins = ["'self'", STRIPE_CHECKOUT_ORIGIN]
    base = urlsplit(settings.stripe_api_base or "")
    if base.scheme in {"http", "https"} and base.netloc:
        origins.append(f"{base.scheme}://{base.netloc}")
    for host in settings.redirect_hosts or ():
        origins.append(f"https://{host}")
        if host in {"127.0.0.1", "localhost"}:
            origins.append(f"http://{host}")
    return tuple(dict.fromkeys(origins))


def content_security_policy(settings: Settings, form_origins=()) -> str:
    """Our own origin only, plus the extra origins an admin configured (an analytics script,
    an image host): deployment settings, never something a marketer can change. Forms may
    lead only to `form_action_origins` (plus `form_origins`: the order's own return address);
    no <base>, no framing."""
    scripts = " ".join(("'self'", *settings.csp_script_origins))
    images = " ".join(("'self'", "data:", *settings.csp_img_origins))
    connect = " ".join(("'self'", *settings.csp_connect_origins))
    forms = " ".join(dict.fromkeys((*form_action_origins(settings), *form_origins)))
    return (
        f"default-src 'self'; img-src {images}; style-src 'self'; script-src {scripts}; "
        f"connect-src {connect}; object-src 'none'; form-action {forms}; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def init_app(app) -> None:
    @app.errorhandler(CheckoutError)
    def checkout_error(error: CheckoutError):
        return render_error(error.status, error.title, error.message, error.back_url)

    @app.errorhandler(orders.NotFound)
    def order_not_found(_error: orders.NotFound):
        return checkout_error(checkout.order_not_found())

    @app.errorhandler(MoneyError)
    def money_error(error: MoneyError):
        # The detail ("'78.401' has more decimals than USD allows") is for developers and the
        # log; the learner reads what it means for them, in their language.
        current_app.logger.warning("amount refused: %s", error)
        if wants_json():
            return render_error(400, "This amount cannot be paid", str(error))
        return render_error(
            400,
            N_("This amount cannot be paid"),
            N_(
                "The amount we were given for this purchase is not one we can charge. You have "
                "not been charged. Please go back and try again, or contact support."
            ),
        )

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        return render_error(
            400,
            N_("This page has expired"),
            N_(
                "For your security the form timed out. Please go back, reload the page and try "
                "again."
            ),
        )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        title, message = MESSAGES.get(status, (error.name, error.description or ""))
        return render_error(status, title, message)

    @app.errorhandler(OperationalError)
    def database_down(error):
        log.exception("database unavailable")
        return render_error(503, *MESSAGES[503])

    @app.errorhandler(Exception)
    def unexpected(error):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render_error(500, *MESSAGES[500])

    settings = app.config["PORTAL"]
    policy = content_security_policy(settings)
    defaults = [
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "strict-origin-when-cross-origin"),
        ("X-Frame-Options", "DENY"),
        ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
    ]
    if app.config["PREFERRED_URL_SCHEME"] == "https":
        defaults.append(("Strict-Transport-Security", "max-age=63072000; includeSubDomains"))
    no_store = ("Cache-Control", "no-store")
    learner_paths = ("/orders/", *registry.learner_paths())  # and each platform's pages

    @app.after_request
    def security_headers(response):
        # Each header only where the view did not set its own; one pass over the response's
        # headers (Werkzeug's setdefault would scan them once per header).
        headers = response.headers
        present = {name.lower() for name, _value in headers.items()}
        wanted = defaults
        extra_forms = g.get("form_action_origins")
        if extra_forms:
            # The order's own return address: its cancel redirect must not be blocked.
            wanted = [
                ("Content-Security-Policy", content_security_policy(settings, extra_forms)),
                *defaults[1:],
            ]
        if request.path.startswith(learner_paths):
            wanted = [*wanted, no_store]
        headers.extend([item for item in wanted if item[0].lower() not in present])
        return response
