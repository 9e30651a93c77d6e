"""`GET /metrics` in Prometheus' text format, for a scraper holding `PORTAL_METRICS_TOKEN`
(`Authorization: Bearer <token>`). Without the setting the endpoint does not exist (404).

The figures are read from the database at scrape time, so every gunicorn worker and host answers
the same: orders by state, orders needing attention, the job queue, and calls out (per platform
and for Stripe) with their failures over the last 15 minutes.
"""

from __future__ import annotations

import hmac
from datetime import timedelta

from flask import Blueprint, Response, abort, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from portal.admin import figures
from portal.models import utcnow
from portal.observability.metrics import add_collectors

bp = Blueprint("metrics", __name__)

CALL_WINDOW = timedelta(minutes=15)


class PortalCollector:
    def collect(self):
        now = utcnow()
        orders = GaugeMetricFamily("portal_orders", "Orders by state.", labels=["state"])
        for state, count in sorted(figures.orders_by_state().items()):
            orders.add_metric([state], count)
        yield orders

        attention = GaugeMetricFamily(
            "portal_orders_needing_attention",
            "Orders an operator should look at: paid but unfulfilled for over 5 minutes, "
            "fulfil_failed, disputed.",
            labels=["reason"],
        )
        for reason, count in sorted(figures.attention_counts(now).items()):
            attention.add_metric([reason], count)
        yield attention

        jobs = GaugeMetricFamily("portal_jobs", "Queued and dead jobs.", labels=["kind", "state"])
        oldest = GaugeMetricFamily(
            "portal_jobs_oldest_due_seconds",
            "How long the longest-waiting due job of each kind has been due.",
            labels=["kind"],
        )
        for kind, state, count, run_at in sorted(figures.open_jobs(), key=lambda r: r[:2]):
            jobs.add_metric([kind, state], count)
            if state == "queued" and run_at is not None:
                oldest.add_metric([kind], max((now - run_at).total_seconds(), 0.0))
        yield jobs
        yield oldest

        calls = GaugeMetricFamily(
            "portal_external_calls_15m",
            "Calls to the platforms and to Stripe in the last 15 minutes.",
            labels=["target"],
        )
        errors = GaugeMetricFamily(
            "portal_external_call_errors_15m",
            "Of those, the ones that failed upstream (5xx, timeout, no connection).",
            labels=["target"],
        )
        for stats in figures.call_stats(now - CALL_WINDOW):
            calls.add_metric([stats.target], stats.calls)
            errors.add_metric([stats.target], stats.errors)
        yield calls
        yield errors


@bp.get("/metrics")
def metrics():
    token = current_app.config["PORTAL"].metrics_token
    if not token:
        abort(404)
    header = request.headers.get("Authorization", "")
    scheme, _, offered = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        offered.strip().encode(), token.encode()
    ):
        return Response(
            "unauthorized\n",
            status=401,
            mimetype="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortalCollector())
    add_collectors(registry)  # requests and calls out, merged across gunicorn workers
    return Response(
        generate_latest(registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
    )
