"""Error pages and security headers.

Every error a learner can meet is a branded page (or a JSON error object for API and webhook
clients) that says what to do next; internals never leak, and a 500 rolls nothing back that was
already committed.
"""

from __future__ import annotations

import logging

from flask import jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from portal.checkout import CheckoutError
from portal.money import MoneyError

log = logging.getLogger("portal.errors")

MESSAGES = {
    400: ("Something is wrong with this request", "Please go back and try again."),
    403: ("Not allowed", "This page is not available to you."),
    404: ("Page not found", "We could not find what you were looking for."),
    405: ("Not allowed", "This page cannot be used that way. Please go back and try again."),
    413: ("Too large", "The request was too large."),
    429: ("Too many requests", "Please wait a moment and try again."),
    500: (
        "Something went wrong",
        "An unexpected error happened on our side. You have not been "
        "charged twice; please try again in a few minutes.",
    ),
    503: ("Temporarily unavailable", "Please try again in a few minutes."),
}


def wants_json() -> bool:
    if request.path.startswith(("/api/", "/webhooks/")):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return (
        best == "application/json"
        and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]
    )


def render_error(status: int, title: str, message: str, back_url: str | None = None):
    if wants_json():
        return jsonify(error={"code": status, "title": title, "message": message}), status
    template = (
        f"errors/{status}.html"
        if status in {400, 403, 404, 405, 500, 503}
        else "errors/generic.html"
    )
    return (
        render_template(template, status=status, title=title, message=message, back_url=back_url),
        status,
    )


def init_app(app) -> None:
    @app.errorhandler(CheckoutError)
    def checkout_error(error: CheckoutError):
        return render_error(error.status, error.title, error.message, error.back_url)

    @app.errorhandler(MoneyError)
    def money_error(error: MoneyError):
        return render_error(400, "This amount cannot be paid", str(error))

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        return render_error(
            400,
            "This page has expired",
            "For your security the form timed out. Please go back, reload the page and try again.",
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

    @app.after_request
    def security_headers(response):
        headers = response.headers
        headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        )
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        if app.config["PREFERRED_URL_SCHEME"] == "https":
            headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
        if request.path.startswith(("/orders/", "/skilljar/", "/openlearning/", "/cleeng/")):
            headers.setdefault("Cache-Control", "no-store")
        return response
