"""Observability: request ids, structured logs, and the process-local Prometheus metrics.

- `request_ids`: every request's id (kept from a sane `X-Request-Id`, else new), echoed on the
  response, sent on every call out, written in every log line.
- `logs`: JSON (or plain text) log lines with secret setting values and card numbers masked.
- `metrics`: requests by endpoint and status, calls out by target and outcome; `/metrics`
  (portal.admin.metrics) merges them across gunicorn workers.

This package's `init_app` is the Flask side: the request-id middleware, the order reference of
the request's log lines, and the request counters. The package imports nothing from the rest of
the portal but the settings' declarations (which settings are secret), so every layer may use
it.
"""

from __future__ import annotations

import time

from flask import g, request

from portal.observability.metrics import HTTP_DURATION, HTTP_REQUESTS
from portal.observability.request_ids import (
    ORDER_REFERENCE,
    RequestIdMiddleware,
    current_request_id,
    order_reference_var,
)


def init_app(app) -> None:
    app.wsgi_app = RequestIdMiddleware(app.wsgi_app)

    @app.before_request
    def _order_context():
        g.request_id = request.environ.get("portal.request_id") or current_request_id()
        reference = (request.view_args or {}).get("reference")
        if isinstance(reference, str) and ORDER_REFERENCE.fullmatch(reference):
            order_reference_var.set(reference)

    counters: dict[tuple, object] = {}  # each label set's child, looked up once
    durations: dict[str, object] = {}

    @app.after_request
    def _count(response):
        endpoint = request.endpoint or "unmatched"
        key = (endpoint, request.method, response.status_code)
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = HTTP_REQUESTS.labels(endpoint, key[1], str(key[2]))
        counter.inc()
        started = request.environ.get("portal.started")
        if started is not None:
            duration = durations.get(endpoint)
            if duration is None:
                duration = durations[endpoint] = HTTP_DURATION.labels(endpoint)
            duration.observe(time.perf_counter() - started)
        return response
