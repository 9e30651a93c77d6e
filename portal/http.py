"""Outbound HTTP to the platforms: pooled sessions, explicit timeouts, every call logged.

Each call is written to the order's event log (method, URL without secrets, status, duration) and
to the application log with the order reference. Retrying is the job queue's business, not this
module's: a POST that may have reached the platform is never silently repeated here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from portal.observability.metrics import observe_upstream, outcome_of
from portal.observability.request_ids import outbound_headers
from portal.outbound import BlockedDestination

log = logging.getLogger("portal.http")

# Connections kept per upstream host: one per thread that may call it at once. create_app sets it
# from PORTAL_HTTP_POOL_SIZE (default: gunicorn's threads per worker) before building clients.
DEFAULT_POOL_SIZE = 16

SECRET_QUERY_KEYS = frozenset({"api_key", "key", "token", "access_token", "secret"})


class UpstreamError(Exception):
    """A platform or Stripe call failed. `transient` says whether trying again may help."""

    def __init__(
        self, message: str, *, transient: bool, status: int | None = None, timeout: bool = False
    ):
        super().__init__(message)
        self.transient = transient
        self.status = status
        # A timeout is ambiguous: the call may still take effect after we stopped waiting.
        self.timeout = timeout


@dataclass
class CallRecord:
    method: str
    url: str
    status: int | None
    duration_ms: int
    error: str | None = None


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    query = [
        (k, "[redacted]" if k.lower() in SECRET_QUERY_KEYS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def set_default_pool_size(size: int) -> None:
    global DEFAULT_POOL_SIZE
    DEFAULT_POOL_SIZE = max(1, int(size))


def uses_proxy(environ=None) -> bool:
    """Whether the environment routes calls through a proxy (HTTPS_PROXY, ALL_PROXY, NO_PROXY,
    ...), which requests must then work out for each URL."""
    environ = os.environ if environ is None else environ
    return any(name.lower().endswith("_proxy") for name in environ)


def new_session(pool_size: int | None = None) -> requests.Session:
    """A keep-alive session whose pool holds `pool_size` connections per host (default: the
    concurrency of this process), so no thread opens a new connection for each call.

    Without a proxy in the environment, the environment is read once here and not on every
    call (requests walks os.environ for proxies, CA bundles and .netrc per call when
    `trust_env` is on: about a millisecond of CPU each time): REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE still choose the CA bundle, and .netrc is never read (every upstream gets its
    credentials from our settings)."""
    session = requests.Session()
    size = pool_size or DEFAULT_POOL_SIZE
    if not uses_proxy():
        session.trust_env = False
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class HttpClient:
    """One pooled session per upstream, with connect/read timeouts from settings."""

    def __init__(
        self,
        name: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        recorder=None,
        session: requests.Session | None = None,
    ):
        self.name = name
        self.timeout = (connect_timeout, read_timeout)
        # `session`: e.g. portal.outbound's guarded session, for destinations others choose.
        self.session = session or new_session()
        # recorder(order_id, CallRecord) writes the call into the order's timeline.
        self.recorder = recorder

    def request(self, method: str, url: str, *, order_id: int | None = None, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        kwargs["headers"] = outbound_headers(kwargs.get("headers"))
        started = time.monotonic()
        status = None
        error = None
        try:
            response = self.session.request(method, url, **kwargs)
            status = response.status_code
            return response
        except BlockedDestination as exc:
            error = "blocked"
            raise UpstreamError(f"{self.name} refused: {exc}", transient=False) from exc
        except requests.Timeout as exc:
            error = "timeout"
            raise UpstreamError(f"{self.name} timed out", transient=True, timeout=True) from exc
        except requests.RequestException as exc:
            error = type(exc).__name__
            raise UpstreamError(f"{self.name} could not be reached", transient=True) from exc
        finally:
            elapsed = time.monotonic() - started
            duration_ms = int(elapsed * 1000)
            observe_upstream(self.name, outcome_of(status, error), elapsed)
            safe_url = redact_url(url)
            log.info(
                "%s %s %s -> %s in %d ms",
                self.name,
                method,
                safe_url,
                status if status is not None else error,
                duration_ms,
                extra={"order_id": order_id},
            )
            if self.recorder is not None and order_id is not None:
                self.recorder(order_id, CallRecord(method, safe_url, status, duration_ms, error))


def classify(response: requests.Response, what: str) -> UpstreamError:
    """Turn a non-2xx answer into an UpstreamError: 408/425/429/5xx may pass, other 4xx will not."""
    status = response.status_code
    transient = status in {408, 425, 429} or status >= 500
    return UpstreamError(f"{what}: HTTP {status}", transient=transient, status=status)
