"""`/api/v1` views: authenticate, parse and validate the JSON body against the OpenAPI schema,
apply the idempotency key, call one function of `portal.api.orders`, `.capture` or `.cancel`,
answer JSON."""

from __future__ import annotations

import functools
import logging
import re
from datetime import timedelta

from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from portal import jsonlimits
from portal.api import cancel, capture, idempotency, keys, orders, representation, schema
from portal.api.errors import ApiError
from portal.checkout import CheckoutError
from portal.http import UpstreamError
from portal.models import utcnow

log = logging.getLogger("portal.api")
bp = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_BODY_BYTES = 64 * 1024
ORDER_ID = re.compile(r"ord_[A-Za-z0-9_-]{10,40}")


def services():
    return current_app.extensions["portal"]


# --- errors: always the API's JSON shape ------------------------------------------------------


@bp.errorhandler(ApiError)
def api_error(error: ApiError):
    return error.response()


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException):
    status = error.code or 500
    codes = {
        404: ("resource_missing", "Unrecognized request URL."),
        405: ("method_not_allowed", "This URL does not take that method."),
        413: ("body_too_large", f"The request body is larger than {MAX_BODY_BYTES} bytes."),
        429: ("rate_limited", "Too many requests: try again after Retry-After seconds."),
    }
    code, message = codes.get(status, ("invalid_request", error.description or error.name))
    return ApiError(status, code, message).response()


@bp.errorhandler(CheckoutError)
def checkout_error(error: CheckoutError):
    status = error.status if 400 <= error.status < 600 else 409
    code = "payment_provider_unavailable" if status >= 500 else "order_state_conflict"
    return ApiError(status, code, error.message).response()


@bp.errorhandler(UpstreamError)
def upstream_error(error: UpstreamError):
    return orders.upstream_error(error, "The payment provider did not answer").response()


@bp.errorhandler(Exception)
def unexpected(error: Exception):
    log.exception("merchant API: unhandled error on %s %s", request.method, request.path)
    return ApiError(
        500, "internal_error", "Something went wrong on our side; it is safe to retry."
    ).response()


@bp.after_request
def no_store(response):
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# --- request plumbing --------------------------------------------------------------------------


def _body(schema_name: str | None) -> dict:
    request.max_content_length = MAX_BODY_BYTES
    raw = request.get_data(cache=True)
    if not raw.strip():
        data: object = {}
    else:
        if request.mimetype != "application/json":
            raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
        try:
            data = jsonlimits.loads(raw, exact_numbers=True)
        except jsonlimits.TooDeep:
            raise ApiError(
                400,
                "invalid_json",
                f"The body is nested more than {jsonlimits.MAX_DEPTH} levels deep.",
            ) from None
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None
        if b"\\u0000" in raw:  # no text column takes NUL (PostgreSQL refuses it outright)
            raise ApiError(400, "invalid_json", "The body contains a NUL character (\\u0000).")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    if schema_name:
        schema.validate(schema_name, data)
    return data


def endpoint(schema_name: str | None = None, *, idempotent: bool = False):
    """Authenticate, validate, and (for POST) honour `Idempotency-Key`; the view gets
    (key, body, **url values) and returns a dict to answer with 200."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(**values):
            settings = services().settings
            key = keys.authenticate(request.headers.get("Authorization"), settings)
            g.api_key = key
            if key.last_used_at is None or utcnow() - key.last_used_at > timedelta(minutes=1):
                keys.touch(key)
            body = _body(schema_name) if request.method in {"POST", "PATCH"} else {}
            request_key = request.headers.get("Idempotency-Key") if idempotent else None
            if request_key is None:
                return jsonify(view(key, body, request_key=None, **values))
            digest = idempotency.request_hash(request.method, request.path, body)
            previous = idempotency.claim(key.id, request_key, digest)
            if previous is not None:
                response = jsonify(previous.response)
                response.status_code = previous.status
                response.headers["Idempotent-Replayed"] = "true"
                return response
            try:
                result = view(key, body, request_key=request_key, **values)
            except ApiError as error:
                # Refusals decided by the order's state (404, 409) are the answer for this key;
                # an invalid request (400) or one that met an outage (5xx) may be sent again.
                keep = error.status < 500 and error.status != 400
                idempotency.finish(key.id, request_key, error.status, error.body(), keep=keep)
                raise
            except Exception:
                idempotency.finish(key.id, request_key, 500, {}, keep=False)
                raise
            idempotency.finish(key.id, request_key, 200, result, keep=True)
            return jsonify(result)

        return wrapper

    return decorate


def _order_id(value: str) -> str:
    if not ORDER_ID.fullmatch(value):
        raise ApiError(404, "resource_missing", "No such order.", "id")
    return value


# --- endpoints ---------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi():
    response = current_app.response_class(schema.document_bytes(), mimetype="application/json")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.post("/checkout-sessions")
@endpoint("CheckoutSessionCreate", idempotent=True)
def create_checkout_session(key, body, request_key):
    return orders.create_checkout_session(services(), key, body)


@bp.get("/orders/<order_id>")
@endpoint()
def get_order(key, body, request_key, order_id):
    order = orders.load_for_key(key, _order_id(order_id))
    return orders.serialize_order_detail(order, livemode=key.live, settings=services().settings)


@bp.patch("/orders/<order_id>")
@endpoint("OrderUpdate")
def update_order(key, body, request_key, order_id):
    return capture.update_items(services(), key, _order_id(order_id), body["items"])


@bp.post("/orders/<order_id>/capture")
@endpoint("CaptureRequest", idempotent=True)
def capture_order(key, body, request_key, order_id):
    order = capture.capture(services(), key, _order_id(order_id), body.get("amount"), request_key)
    return representation.serialize_order(order, livemode=key.live, settings=services().settings)


@bp.post("/orders/<order_id>/cancel")
@endpoint("CancelRequest", idempotent=True)
def cancel_order(key, body, request_key, order_id):
    order = cancel.cancel(services(), key, _order_id(order_id), body.get("reason"))
    return representation.serialize_order(order, livemode=key.live, settings=services().settings)


@bp.post("/refunds")
@endpoint("RefundCreate", idempotent=True)
def create_refund(key, body, request_key):
    return cancel.refund(services(), key, body, request_key)


ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@bp.route("", methods=ALL_METHODS, defaults={"anything": ""}, strict_slashes=False)
@bp.route("/<path:anything>", methods=ALL_METHODS)
def unknown(anything):
    """Anything else under /api/v1 answers in the API's shape, not with an HTML page."""
    raise ApiError(
        404, "resource_missing", f"Unrecognized request URL ({request.method} {request.path})."
    )
