"""Request ids, structured JSON logs, and the process-local Prometheus metrics.

- Every request gets an id: a sane `X-Request-Id` from the caller (nginx's `$request_id`, a load
  balancer's) is kept, anything else is replaced by a fresh one. It lives in a contextvar for the
  request, comes back on the response, goes out on every call to a platform and to Stripe, and is
  in every log line written while the request runs, with the order's reference when the URL
  names one.
- Logs are one JSON object a line. Known secret values (settings) and anything shaped like a card
  number are masked as the line is written: a safety net under the rule that nothing logs them.
- Metrics: requests by endpoint and status, calls out by target and outcome with a latency
  histogram. Under gunicorn (`PROMETHEUS_MULTIPROC_DIR`, set by gunicorn.conf.py) each worker
  writes its figures to files that `/metrics` merges; otherwise they are this process's own.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import time
import traceback
from datetime import UTC, datetime
from secrets import token_hex

import stripe
from flask import g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess

from portal.config import Settings

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


# --- logs -----------------------------------------------------------------------------------------

# 13 to 19 digits, optionally grouped by spaces or dashes: a payment card number's shape.
# A card number stands on its own: a run of digits inside a longer word (a hex request id, a
# Stripe object id) is left alone even when it happens to pass the Luhn check.
CARD_NUMBER = re.compile(r"(?<![0-9A-Za-z])(?:\d[ -]?){12,18}\d(?![0-9A-Za-z])")
STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "order_id", "taskName"}
)


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        number = int(char)
        if index % 2:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


def mask_cards(text: str) -> str:
    def replace(match: re.Match) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return "[card number]" if _luhn(digits) else match.group(0)

    return CARD_NUMBER.sub(replace, text)


def secret_values(settings: Settings) -> tuple[str, ...]:
    """The secret values among the settings, longest first (so no secret is half-masked)."""
    values: set[str] = set()
    from portal.config import secret_names

    for name in secret_names(settings):
        value = getattr(settings, name.lower(), None)
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if isinstance(item, str) and len(item) >= 6:
                values.add(item)
                if "://" in item and "@" in item:  # a URL with a password: mask that part too
                    password = item.split("://", 1)[1].rsplit("@", 1)[0].partition(":")[2]
                    if len(password) >= 6:
                        values.add(password)
    return tuple(sorted(values, key=len, reverse=True))


class ScrubbingFormatter(logging.Formatter):
    """A formatter that masks, in each finished line, the values of the secret settings and
    anything shaped like a card number: the safety net under both log formats."""

    def __init__(self, secrets: tuple[str, ...] = (), fmt: str | None = None):
        super().__init__(fmt)
        self.secrets: tuple[str, ...] = ()
        self.add_secrets(secrets)

    def add_secrets(self, secrets) -> None:
        self.secrets = tuple(sorted(set(self.secrets) | set(secrets), key=len, reverse=True))
        # Each secret, and as it appears inside a JSON string where that differs: made once
        # here, not for every line.
        forms = []
        for secret in self.secrets:
            forms.append(secret)
            quoted = json.dumps(secret)[1:-1]
            if quoted != secret:
                forms.append(quoted)
        self._forms = tuple(forms)

    def scrub(self, line: str) -> str:
        for form in self._forms:
            if form in line:
                line = line.replace(form, "[redacted]")
        return mask_cards(line)


# A line break or other control character in a message (a platform's error text, a name) would
# start what looks like a new log line in a plain-text log; it is written as its escape.
CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def _escaped(match: re.Match) -> str:
    return json.dumps(match.group(0))[1:-1]


class TextFormatter(ScrubbingFormatter):
    """Plain lines (PORTAL_LOG_FORMAT=text): time, level, logger, order id and message, one line
    a record (control characters in the message escaped; a traceback follows on its own lines),
    with the same masking as the JSON lines."""

    FORMAT = "%(asctime)s %(levelname)s %(name)s [order=%(order_id)s] %(message)s"

    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__(secrets, self.FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = CONTROL.sub(_escaped, record.message)
        if not hasattr(record, "order_id"):
            record.order_id = "-"
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


class JsonFormatter(ScrubbingFormatter):
    """One JSON object a line: time, level, logger, message, request id, order id/reference,
    any `extra` fields, and the exception if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        order_id = getattr(record, "order_id", None)
        if order_id not in (None, "-"):
            entry["order_id"] = order_id
        reference = order_reference_var.get()
        if reference:
            entry["order_reference"] = reference
        for key, value in record.__dict__.items():
            if key not in STANDARD_ATTRIBUTES and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return self.scrub(json.dumps(entry, default=str, ensure_ascii=False))


def json_handler(stream=None, secrets=()) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(secrets))
    return handler


# --- metrics --------------------------------------------------------------------------------------

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


# --- Stripe's HTTP client ----------------------------------------------------------------------


class StripeHttpClient(stripe.RequestsClient):
    """The SDK's requests client, plus: this request's id on every call, and a back-off on 429
    (Stripe's rate limit), which the SDK itself does not retry. A 429 means Stripe did nothing,
    and creates carry an idempotency key, so sending the same request again is safe."""

    RATE_LIMIT_RETRIES = 3
    BASE_DELAY = 0.5
    MAX_DELAY = 4.0
    sleep = staticmethod(time.sleep)

    def request(self, method, url, headers, post_data=None):
        headers = outbound_headers(headers)
        attempt = 0
        while True:
            content, status, response_headers = super().request(method, url, headers, post_data)
            if status != 429 or attempt >= self.RATE_LIMIT_RETRIES:
                return content, status, response_headers
            attempt += 1
            self.sleep(self._delay(attempt, response_headers))

    def _delay(self, attempt: int, response_headers) -> float:
        delay = self.BASE_DELAY * 2 ** (attempt - 1)
        retry_after = (response_headers or {}).get("Retry-After")
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, self.MAX_DELAY)


# --- the Flask side -------------------------------------------------------------------------------


def init_app(app) -> None:
    from portal.admin import metrics

    metrics.add_registry_hook(add_collectors)
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
