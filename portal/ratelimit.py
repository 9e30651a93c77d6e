"""Rate limits per client address (Flask-Limiter) and request size caps.

Limited, per client IP (behind `PORTAL_TRUSTED_PROXY_HOPS` proxies, the address the nearest
trusted proxy saw, as ProxyFix sets it):

- the learner entry points (each platform's `PlatformSpec.entry_endpoints`: `/skilljar/checkout`,
  `/openlearning/enrol`, `/cleeng/checkout`) and `POST /orders/<reference>/pay`:
  `PORTAL_RATELIMIT_ENTRY` each;
- the merchant API (`/api/v1/...`): `PORTAL_RATELIMIT_API`, shared by the whole API;
- the console's password sign-in (`POST /admin/login`): `PORTAL_RATELIMIT_LOGIN` (on top of the
  database-backed lockout, which counts failures; this counts attempts).

A refused request gets a 429 with `Retry-After`: the branded page, or a JSON error for API
clients. Counters live in memory (per process) unless `PORTAL_RATELIMIT_STORAGE_URL` points at a
shared store (`redis://host:6379/0`), which several hosts need for one limit between them. If
that store goes away, each process falls back to counting in memory: payments go on.

Webhooks (`POST /webhooks/...`) are never rate limited (Stripe and Cleeng retry what is refused,
and a refusal would only delay fulfilment) but their bodies are capped at
`PORTAL_WEBHOOK_MAX_BYTES` (256 KB; Stripe's events are a few KB); every other request at 1 MB
(`MAX_CONTENT_LENGTH`). Both answer 413.
"""

from __future__ import annotations

import logging

from flask import abort, request
from flask_limiter import Limit, Limiter

from portal.platforms import registry

log = logging.getLogger("portal.ratelimit")

CORE_ENTRY_ENDPOINTS = ("orders.pay",)
LOGIN_ENDPOINT = "admin.login"
API_BLUEPRINT = "api"
WEBHOOK_PREFIX = "/webhooks/"


def client_ip() -> str:
    """The client's address. ProxyFix (create_app, `PORTAL_TRUSTED_PROXY_HOPS`) has already put
    the address the nearest trusted proxy saw into `remote_addr`."""
    return (request.remote_addr or "unknown")[:64]


def _storage_options(url: str) -> dict:
    if url.startswith(("redis://", "rediss://", "redis+")):
        # A slow or absent Redis must not hold a learner's request: give up fast and fall back.
        return {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
    return {}


def _only(endpoints: frozenset[str], methods: frozenset[str] | None = None):
    def exempt() -> bool:
        if methods is not None and request.method not in methods:
            return True
        return request.endpoint not in endpoints

    return exempt


def _not_api() -> bool:
    return request.blueprint != API_BLUEPRINT


def entry_endpoints() -> tuple[str, ...]:
    """Every platform's learner entry points, and the pay button."""
    return registry.entry_endpoints() + CORE_ENTRY_ENDPOINTS


def init_app(app) -> Limiter:
    """Call after every blueprint is registered. The limits are checked before anything else
    runs for a request (before CSRF checks and the views), so a flood of refused or malformed
    requests is counted too."""
    settings = app.config["PORTAL"]
    storage = settings.ratelimit_storage_url
    limits = [
        # Each entry point on its own, per client address.
        Limit(settings.ratelimit_entry, exempt_when=_only(frozenset(entry_endpoints()))),
        # The whole merchant API together.
        Limit(settings.ratelimit_api, scope="api", shared=True, exempt_when=_not_api),
        Limit(
            settings.ratelimit_login,
            exempt_when=_only(frozenset({LOGIN_ENDPOINT}), frozenset({"POST"})),
        ),
    ]
    hooks = app.before_request_funcs.setdefault(None, [])
    earlier = list(hooks)
    limiter = Limiter(
        client_ip,
        app=app,
        default_limits=limits,
        storage_uri=storage,
        storage_options=_storage_options(storage),
        strategy="fixed-window",
        headers_enabled=True,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="portal",
        enabled=settings.ratelimit_enabled,
    )
    # Flask-Limiter checks the limits in the before_request hook its init_app adds, after the
    # hooks already there (CSRF's among them): that hook moves to the front.
    checks = [hook for hook in hooks if hook not in earlier]
    for hook in checks:
        hooks.remove(hook)
    hooks[0:0] = checks
    webhook_cap = settings.webhook_max_bytes

    def _cap_webhooks():
        if request.method == "POST" and request.path.startswith(WEBHOOK_PREFIX):
            if request.content_length is not None and request.content_length > webhook_cap:
                log.warning(
                    "webhook body of %d bytes refused (cap %d)", request.content_length, webhook_cap
                )
                abort(413)
            request.max_content_length = webhook_cap  # a chunked body is cut off as it is read

    hooks.insert(len(checks), _cap_webhooks)  # before anything reads a body
    app.extensions["portal_limiter"] = limiter
    return limiter
