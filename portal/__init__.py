"""The checkout portal: a branded, server-rendered checkout between course platforms and Stripe."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from urllib.parse import urlsplit

from flask import Flask
from flask_wtf import CSRFProtect

from portal.config import ConfigError, Settings, load_settings, validate

csrf = CSRFProtect()

# The sandbox's own values of the core's settings; each platform fills its own
# (`PlatformSpec.sandbox_defaults`).
SANDBOX_DEFAULTS = {
    "STRIPE_SECRET_KEY": "sk_test_sandbox",
    "STRIPE_WEBHOOK_SECRET": ("whsec_sandbox",),
}


class _OrderIdDefault(logging.Filter):
    def filter(self, record):
        if not hasattr(record, "order_id"):
            record.order_id = "-"
        return True


class _PortalHandler(logging.StreamHandler):
    """The portal's one handler on the root logger (configure_logging adds it once)."""


def configure_logging(level=logging.INFO, settings: Settings | None = None) -> None:
    """One handler on the root logger: JSON lines (PORTAL_LOG_FORMAT=json, the default) with the
    request id and order, or plain text lines; secret setting values masked in both."""
    from portal.observability.logs import (
        JsonFormatter,
        ScrubbingFormatter,
        TextFormatter,
        secret_values,
    )

    root = logging.getLogger()
    secrets_ = secret_values(settings) if settings else ()
    for existing in root.handlers:
        if isinstance(existing, _PortalHandler):
            if isinstance(existing.formatter, ScrubbingFormatter):
                existing.formatter.add_secrets(secrets_)
            return
    handler = _PortalHandler()
    handler.addFilter(_OrderIdDefault())
    if settings is None or settings.log_format == "json":
        handler.setFormatter(JsonFormatter(secrets_))
    else:
        handler.setFormatter(TextFormatter(secrets_))
    root.addHandler(handler)
    root.setLevel(level)
    # The Stripe SDK logs every request at INFO; portal.stripe already logs each call once.
    logging.getLogger("stripe").setLevel(logging.WARNING)


def serving_threads() -> int:
    """Threads per process: gunicorn.conf.py exports its final `threads` as GUNICORN_THREADS."""
    try:
        return max(1, int(os.environ.get("GUNICORN_THREADS", "16")))
    except ValueError:
        return 16


def _apply_sandbox_defaults(settings: Settings, environ, instance_path: str) -> Settings:
    """The settings with the sandbox's stand-in keys and URLs where none is configured."""
    public = settings.public_url
    changes = {
        name: value
        for name, value in SANDBOX_DEFAULTS.items()
        if not getattr(settings, name.lower())
    }
    if "PORTAL_STRIPE_API_BASE" not in environ:
        changes["STRIPE_API_BASE"] = public + "/sandbox/stripe"
    if not settings.brand_home_url:
        changes["BRAND_HOME_URL"] = public + "/sandbox/"
    from portal.platforms import registry

    for spec in registry.installed():  # each platform's stand-in keys and URLs
        if spec.sandbox_defaults is not None:
            changes.update(spec.sandbox_defaults(settings, environ, instance_path))
    return dataclasses.replace(settings, **{name.lower(): v for name, v in changes.items()})


def _local_secret_key(instance_path: str) -> str:
    """Sandbox and tests only (production requires PORTAL_SECRET_KEY): one random key kept in the
    instance folder, so every gunicorn worker signs sessions and CSRF tokens alike."""
    os.makedirs(instance_path, exist_ok=True)
    path = os.path.join(instance_path, "sandbox-secret-key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as handle:
            return handle.read().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    with open(path) as handle:
        return handle.read().strip()


def create_app(config: dict | None = None) -> Flask:
    """Application factory. `config` overrides settings by name (without the PORTAL_ prefix);
    `TESTING` in it marks a test app."""
    from dotenv import load_dotenv

    load_dotenv(override=False)
    config = dict(config or {})
    testing = bool(config.pop("TESTING", False))
    environ = {**os.environ, **{f"PORTAL_{k}": "set" for k in config}}
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )
    from portal.platforms import registry

    settings = load_settings(config, extra=registry.settings())  # the core's and each platform's
    if settings.sandbox:
        settings = _apply_sandbox_defaults(settings, environ, app.instance_path)
    validate(settings, testing=testing)
    if not settings.database_url:
        os.makedirs(app.instance_path, exist_ok=True)
        settings = dataclasses.replace(
            settings, database_url=f"sqlite:///{os.path.join(app.instance_path, 'portal.db')}"
        )
    if settings.sandbox and not settings.sandbox_database_url:
        os.makedirs(app.instance_path, exist_ok=True)
        settings = dataclasses.replace(
            settings,
            sandbox_database_url=f"sqlite:///{os.path.join(app.instance_path, 'sandbox.db')}",
        )

    https = urlsplit(settings.public_url).scheme == "https"
    app.config.update(
        TESTING=testing,
        SECRET_KEY=settings.secret_key or _local_secret_key(app.instance_path),
        PORTAL=settings,
        PREFERRED_URL_SCHEME="https" if https else "http",
        SESSION_COOKIE_SECURE=https,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="portal_session",
        MAX_CONTENT_LENGTH=1024 * 1024,
        WTF_CSRF_TIME_LIMIT=4 * 3600,
        TEMPLATES_AUTO_RELOAD=False,
    )

    from jinja2 import StrictUndefined

    app.jinja_env.undefined = StrictUndefined
    if not testing:
        configure_logging(settings=settings)

    from portal.db import db, default_pool_size
    from portal.http import set_default_pool_size

    threads = serving_threads()
    set_default_pool_size(settings.http_pool_size or threads)
    from sqlalchemy.exc import ArgumentError

    try:
        db.configure(
            settings.database_url,
            pool_size=settings.db_pool_size or default_pool_size(threads),
        )
    except ArgumentError as exc:  # not a URL, or a database SQLAlchemy has no dialect for
        raise ConfigError(f"PORTAL_DATABASE_URL is malformed: {exc}") from None
    except ImportError as exc:  # a dialect whose driver is not installed
        raise ConfigError(
            f"PORTAL_DATABASE_URL names a database driver that is not installed: {exc}"
        ) from None

    from portal import cli, errors, orders, views, webhooks
    from portal.platforms import registry
    from portal.services import build_services

    app.extensions["portal"] = build_services(settings)
    orders.init_app(app)  # the orders learner pages showed last, by row version
    csrf.init_app(app)
    errors.init_app(app)
    app.register_blueprint(views.bp)
    for spec in registry.installed():  # each platform's entry URL, pages and webhooks
        if spec.blueprint is not None:
            app.register_blueprint(spec.blueprint, url_prefix=spec.url_prefix)
            if spec.csrf_exempt:  # the spec says why (a signed POST, a signed webhook)
                csrf.exempt(spec.blueprint)
    app.register_blueprint(webhooks.bp)
    csrf.exempt(webhooks.bp)
    cli.init_app(app)
    from portal import admin

    admin.init_app(app)
    from portal import api

    api.init_app(app)  # the merchant API, /api/v1
    from portal import branding

    branding.init_app(app)  # brands, /brand/<id>/theme.css and logo, learner template i18n
    if settings.sandbox:
        from portal import sandbox

        sandbox.init_app(app)
    from portal import observability, ratelimit

    ratelimit.init_app(app)  # after every blueprint: the limits attach to registered views
    observability.init_app(app)
    if settings.trusted_proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

    from portal.money import format_money

    app.jinja_env.globals["brand"] = {
        "name": settings.brand_name,
        "support_email": settings.brand_support_email,
    }
    app.jinja_env.globals["sandbox"] = settings.sandbox
    app.jinja_env.filters["money"] = format_money
    return app


__all__ = ["ConfigError", "create_app"]
