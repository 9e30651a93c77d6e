"""The process-local Prometheus metrics: requests by endpoint and status, calls out by target and
outcome with a latency histogram. Under gunicorn (`PROMETHEUS_MULTIPROC_DIR`, set by
gunicorn.conf.py) each worker writes its figures to files that `/metrics` (portal.admin.metrics)
merges; otherwise they are this process's own.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "portal_http_requests",
    "Requests answered, by endpoint (the route's name, not the raw path), method and status.",
    ["endpoint", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "portal_http_request_duration_seconds",
    "Time to answer a request, by endpoint.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_CALLS = Counter(
    "portal_upstream_calls",
    "Calls to the platforms and to Stripe, by target and outcome "
    "(ok, client_error, server_error, rate_limited, timeout, error).",
    ["target", "outcome"],
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "portal_upstream_call_duration_seconds",
    "Time a call to a platform or to Stripe took, by target and outcome.",
    ["target", "outcome"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)


def outcome_of(status: int | None, error: str | None = None) -> str:
    if status is None:
        return "timeout" if error == "timeout" else "error"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "ok"


def observe_upstream(target: str, outcome: str, seconds: float) -> None:
    UPSTREAM_CALLS.labels(target, outcome).inc()
    UPSTREAM_DURATION.labels(target, outcome).observe(seconds)


def multiprocess_dir() -> str | None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None


def add_collectors(registry: CollectorRegistry) -> None:
    """The `/metrics` hook: every gunicorn worker's figures merged, or this process's own."""
    path = multiprocess_dir()
    if path:
        prometheus_multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ProcessMetrics())


class _ProcessMetrics:
    def collect(self):
        yield from REGISTRY.collect()
