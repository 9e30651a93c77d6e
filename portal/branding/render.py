"""`render_learner`: the one way a learner-facing page is rendered. It picks the order's brand
and locale, turns the view's context into plain data, adds the stable globals every learner
template may read, and renders in the sandbox with the published overrides. An override that
fails at render time never takes a page down: the default renders instead, the failure is logged
and recorded on the override for the console.

Stable globals: `brand` (dict), `lang` (the page's language, for `<html lang>`), `locale` (for
money, dates and numbers), `sandbox`, `preview`, `url_for` (our learner endpoints only),
`csrf_token` (the session's token), `fmt` (money in the order's currency and the learner's
locale). Per page: `order` (a dict of the order's columns), and what the view passes.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import traceback
from datetime import date, datetime
from decimal import Decimal

from flask import current_app, request, url_for
from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SecurityError
from sqlalchemy import select, update

from portal import i18n
from portal.branding import brands
from portal.branding.environment import (
    TEMPLATES_DIR,
    live_environment,
    live_overrides,
    overrides_used,
)
from portal.db import db
from portal.models import Order, TemplateOverride, utcnow
from portal.money import format_money

log = logging.getLogger("portal.branding")

SAFE_ENDPOINTS = frozenset(
    {
        "static",
        "orders.review",
        "orders.cancelled",
        "orders.pay",
        "orders.cancel",
        "orders.status",
        "sandbox.index",
        "branding.theme",
        "branding.logo",
    }
)


def safe_url_for(endpoint: str, **values) -> str:
    """`url_for` for templates: our learner pages and static files only, plain values only."""
    if endpoint not in SAFE_ENDPOINTS:
        raise SecurityError(f"url_for({endpoint!r}) is not available to learner templates")
    for value in values.values():
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise SecurityError("url_for takes text and numbers only")
    return url_for(endpoint, **values)


def order_data(order: Order) -> dict:
    data = {column.key: plain(getattr(order, column.key)) for column in Order.__table__.columns}
    data["total_minor"] = order.total_minor
    data["is_paid"] = order.is_paid
    return data


def plain(value):
    """Plain data for a template: text, numbers, dates, lists and dicts of them. An ORM order
    becomes a dict of its columns; a dataclass (a tax quote) a dict of its fields and
    properties; anything else is refused."""
    if value is None or isinstance(value, bool | int | float | str | Decimal | date | datetime):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, Order):
        return order_data(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in dir(type(value)):
            if isinstance(getattr(type(value), name, None), property):
                data[name] = plain(getattr(value, name))
        return data
    raise TypeError(f"{type(value).__name__} is not plain data for a learner template")


def money_formatter(currency: str, locale: str):
    def fmt(amount_minor):
        return format_money(int(amount_minor or 0), currency, locale)

    return fmt


def _csrf_token() -> str:
    from flask_wtf.csrf import generate_csrf

    return generate_csrf()


def request_locale(settings: dict) -> str:
    return i18n.negotiate(None, request.accept_languages, settings["DEFAULT_LOCALE"])


def page_context(
    *,
    brand: dict,
    locale: str,
    order: dict | None,
    context: dict,
    preview: bool = False,
    csrf_token=_csrf_token,
) -> dict:
    settings = current_app.config["PORTAL"]
    language = i18n.language_for(locale)
    page = {key: plain(value) for key, value in context.items() if key != "fmt"}
    page.update(
        brand=brand,
        lang=language.replace("_", "-"),
        locale=locale,
        sandbox=bool(settings["SANDBOX"]),
        preview=preview,
        url_for=safe_url_for,
        csrf_token=csrf_token,
    )
    if order is not None:
        page["order"] = order
        page["fmt"] = money_formatter(order["currency"], locale)
    return page


def published_overrides() -> dict[str, tuple[object, str]]:
    try:
        with db.reader() as session:
            rows = session.execute(
                select(
                    TemplateOverride.id, TemplateOverride.template_name, TemplateOverride.source
                ).where(TemplateOverride.published.is_(True))
            ).all()
    except Exception:  # noqa: BLE001 - without the database, the defaults still render
        log.exception("template overrides could not be loaded: rendering the defaults")
        return {}
    return {name: (("live", row_id), source) for row_id, name, source in rows}


def describe(exc: BaseException, override_name: str | None = None) -> str:
    """A one-line account of a template error with its line number, for the marketer."""
    if isinstance(exc, TemplateSyntaxError):
        where = exc.name or override_name or "template"
        if where.startswith("default:"):
            where = where[len("default:") :]
        return f"{where}, line {exc.lineno}: {exc.message}"
    line, where = None, None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == "<template>":
            line, where = frame.lineno, override_name or "override"
        elif frame.filename.startswith(str(TEMPLATES_DIR)) and line is None:
            line = frame.lineno
            where = frame.filename[len(str(TEMPLATES_DIR)) + 1 :]
    message = str(exc) or type(exc).__name__
    if line is not None:
        return f"{where}, line {line}: {message}"
    return message


def _record_failure(names: list[str], text: str) -> None:
    try:
        with db.transaction() as session:
            session.execute(
                update(TemplateOverride)
                .where(
                    TemplateOverride.published.is_(True),
                    TemplateOverride.template_name.in_(names),
                )
                .values(
                    failure_count=TemplateOverride.failure_count + 1,
                    last_failure=text[:2000],
                    last_failure_at=utcnow(),
                )
            )
    except Exception:  # noqa: BLE001 - recording must never break the page either
        log.exception("could not record a template override failure")


def render_in(env, name: str, context: dict, overrides: dict) -> str:
    """Render with `overrides` live; raise what the template raises."""
    token = live_overrides.set(overrides)
    try:
        return env.get_template(name).render(context)
    finally:
        live_overrides.reset(token)


def render_learner(name: str, *, order: Order | None = None, locale: str | None = None, **context):
    """The HTML of learner page `name` for `order` (or none, for error pages)."""
    settings = current_app.config["PORTAL"]
    locale = locale or (order.locale if order is not None else None) or request_locale(settings)
    brand = brands.brand_for(order, settings, url_for)
    page = page_context(
        brand=brand,
        locale=locale,
        order=order_data(order) if order is not None else None,
        context=context,
    )
    env = live_environment(i18n.language_for(locale))
    overrides = published_overrides()
    used: list[str] = []
    used_token = overrides_used.set(used)
    try:
        return render_in(env, name, page, overrides)
    except Exception as exc:
        if not used:
            raise
        text = describe(exc, used[-1])
        log.error(
            "template override failed, rendering the default instead: %s",
            text,
            extra={"order_id": order.id if order is not None else "-"},
        )
        _record_failure(used, text)
        return render_in(env, name, page, {})
    finally:
        overrides_used.reset(used_token)
