"""Request ids: every request gets one. A sane `X-Request-Id` from the caller (nginx's
`$request_id`, a load balancer's) is kept, anything else is replaced by a fresh one. It lives in a
contextvar for the request, comes back on the response, goes out on every call to a platform and
to Stripe (`outbound_headers`), and is in every log line written while the request runs, with the
order's reference when the URL names one.
"""

from __future__ import annotations

import contextvars
import re
import time
from secrets import token_hex

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{7,127}")
ORDER_REFERENCE = re.compile(r"ord_[A-Za-z0-9_-]{10,40}")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "portal_request_id", default=None
)
order_reference_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "portal_order_reference", default=None
)


def current_request_id() -> str | None:
    return request_id_var.get()


def accept_request_id(offered: str | None) -> str:
    """The caller's id if it is 8 to 128 plain characters, else a new random one."""
    if offered and REQUEST_ID.fullmatch(offered):
        return offered
    return token_hex(16)


def outbound_headers(headers: dict | None = None) -> dict:
    """`headers` plus this request's id, for a call to a platform or to Stripe."""
    headers = dict(headers or {})
    request_id = request_id_var.get()
    if request_id and REQUEST_ID_HEADER not in headers:
        headers[REQUEST_ID_HEADER] = request_id
    return headers


class RequestIdMiddleware:
    """WSGI: sets the request id for the whole request (before routing, through error pages and
    teardown) and echoes it on the response."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        request_id = accept_request_id(environ.get("HTTP_X_REQUEST_ID"))
        environ["portal.request_id"] = request_id
        environ["portal.started"] = time.perf_counter()
        token = request_id_var.set(request_id)
        order_token = order_reference_var.set(None)

        def start(status, headers, exc_info=None):
            headers = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, exc_info)

        try:
            # Flask runs the view and renders the body within this call; a streamed body (a CSV
            # export) is produced later and its log lines carry no request id.
            return self.wsgi_app(environ, start)
        finally:
            order_reference_var.reset(order_token)
            request_id_var.reset(token)
