"""The operator console, under `/admin`: sign-in (local accounts and single sign-on), the
dashboard, order search and export, each order's timeline and the operator actions on it, users,
settings, the audit log, and the marketers' branding page. `/metrics` (Prometheus) lives here too.

Layout: `auth` (passwords, lockout, sessions, roles), `oidc` (single sign-on), `forms`; the thin
views: `routes` (the guard, sign-in, home, dashboard, users, settings, audit log), `order_pages`
(orders and the actions on them), `delivery_pages` (merchant webhook deliveries), `branding`
(brands and their assignments), `template_pages` (the template editor); `operations` (the
writes), `queries` (the reads), `figures` (the dashboard's and /metrics' figures), `audit`, `cli`
(create-user), `metrics`.
"""

from __future__ import annotations

from flask import Blueprint

from portal.config import ConfigError, Settings

bp = Blueprint("admin", __name__, url_prefix="/admin")


def check_settings(settings: Settings) -> None:
    from portal.admin import oidc

    for name in ("ADMIN_IDLE_MINUTES", "ADMIN_SESSION_HOURS", "ADMIN_LOCKOUT_MINUTES"):
        if getattr(settings, name.lower()) < 1:
            raise ConfigError(f"PORTAL_{name} must be at least 1")
    token = settings.metrics_token
    if token is not None and len(token) < 16:
        raise ConfigError("PORTAL_METRICS_TOKEN must be at least 16 characters")
    oidc.check_settings(settings)


def init_app(app) -> None:
    check_settings(app.config["PORTAL"])
    from portal.admin import (  # noqa: F401 - registers
        branding,  # noqa: F401 - registers the marketers' pages
        cli,
        delivery_pages,
        metrics,
        oidc,
        operations,
        order_pages,
        routes,
        template_pages,  # the marketers' template editor
    )

    app.register_blueprint(bp)
    app.register_blueprint(metrics.bp)
    oidc.init_app(app)
    cli.init_app(app)
