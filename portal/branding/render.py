"""`render_learner`: the one way a learner-facing page is rendered. It picks the order's brand
and locale, turns the view's context into plain data, adds the stable globals every learner
template may read, and renders in the sandbox with the published overrides. An override that
fails at render time never takes a page down: the default renders instead, the failure is logged
and recorded on the override for the console.

Stable globals: `brand` (dict), `lang` (the page's language, for `<html lang>`), `locale` (for
money, dates and numbers), `sandbox`, `preview`, `url_for` (our learner endpoints only),
`csrf_token` (the session's token), `fmt` (money in the order's currency and the learner's
locale). Per page: `order` (a dict of the order's columns), and what the view passes.

Emails go through the same sandbox, overrides and fallback (portal.branding.emails).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import logging
import secrets
import threading
import traceback
from datetime import date, datetime
from decimal import Decimal
from urllib.parse import urlsplit

from cachetools import LRUCache
from flask import current_app, g, request, url_for
from flask_wtf.csrf import generate_csrf
from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SecurityError
from sqlalchemy import select, update

from portal import i18n
from portal.branding import brands, markup
from portal.branding import cache as branding_cache
from portal.branding.environment import (
    TEMPLATES_DIR,
    live_environment,
    live_overrides,
    overrides_used,
    render_budgeted,
)
from portal.config import Settings
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
        return {name: plain(getattr(value, name)) for name in _dataclass_names(type(value))}
    raise TypeError(f"{type(value).__name__} is not plain data for a learner template")


@functools.cache
def _dataclass_names(kind: type) -> tuple[str, ...]:
    """A dataclass's fields, then its properties: what a template sees of it."""
    fields = [f.name for f in dataclasses.fields(kind)]
    properties = [n for n in dir(kind) if isinstance(getattr(kind, n, None), property)]
    return (*fields, *properties)


def money_formatter(currency: str, locale: str):
    def fmt(amount_minor):
        return format_money(int(amount_minor or 0), currency, locale)

    return fmt


def request_locale(settings: Settings) -> str:
    return i18n.negotiate(None, request.accept_languages, settings.default_locale)


def page_context(
    *,
    brand: dict,
    locale: str,
    order: dict | None,
    context: dict,
    preview: bool = False,
    csrf_token=generate_csrf,
) -> dict:
    settings = current_app.config["PORTAL"]
    language = i18n.language_for(locale)
    page = {key: plain(value) for key, value in context.items() if key != "fmt"}
    page.update(
        brand=brands.in_language(brand, language),
        lang=language.replace("_", "-"),
        locale=locale,
        sandbox=bool(settings.sandbox),
        preview=preview,
        url_for=safe_url_for,
        csrf_token=csrf_token,
    )
    if order is not None:
        page["order"] = order
        page["fmt"] = money_formatter(order["currency"], locale)
    return page


def load_overrides() -> dict[tuple[str, int | None], tuple[object, str]]:
    """The published overrides from the database: {(template, brand id or None for every
    brand): (identity, source)}. The identity names the source too: compiled templates are
    kept by identity, and a row id alone can come back with other text (a restored backup, a
    fresh test database)."""
    with db.reader() as session:
        rows = session.execute(
            select(
                TemplateOverride.id,
                TemplateOverride.template_name,
                TemplateOverride.brand_id,
                TemplateOverride.source,
            ).where(TemplateOverride.published.is_(True))
        ).all()
    return {
        (name, brand_id): (("live", row_id, hashlib.sha256(source.encode()).hexdigest()), source)
        for row_id, name, brand_id, source in rows
    }


def for_brand(overrides: dict, brand_id) -> dict[str, tuple[object, str]]:
    """The overrides a page of brand `brand_id` renders with: {template: (identity, source)},
    the brand's own version of a template before the one for every brand."""
    chosen = {name: value for (name, scope), value in overrides.items() if scope is None}
    if isinstance(brand_id, int):
        chosen.update(
            {name: value for (name, scope), value in overrides.items() if scope == brand_id}
        )
    return chosen


def published_overrides() -> dict[tuple[str, int | None], tuple[object, str]]:
    """The published overrides, kept for a few seconds per process (portal.branding.cache)."""
    try:
        return branding_cache.cache().get("overrides", load_overrides)
    except Exception:  # noqa: BLE001 - without the database, the defaults still render
        log.exception("template overrides could not be loaded: rendering the defaults")
        return {}


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
        timed = bool(overrides) or getattr(env, "has_fixed_overrides", False)
        return render_budgeted(env.get_template(name), context, timed=timed)
    finally:
        live_overrides.reset(token)


def render_learner(name: str, *, order: Order | None = None, locale: str | None = None, **context):
    """The HTML of learner page `name` for `order` (or none, for error pages). An order's pages
    are kept rendered (portal.branding.cache.RenderedPages) with a mark where the CSRF token
    goes; each learner's own token (Flask-WTF's `generate_csrf`) is put in on the way out."""
    settings = current_app.config["PORTAL"]
    locale = locale or (order.locale if order is not None else None) or request_locale(settings)
    brand = brands.brand_for(order, settings, url_for)
    if order is not None:
        _allow_return_forms(order)
    pages = branding_cache.pages() if order is not None else None
    marks: list[bool] = []
    # An order read with its row version (orders.view) is named in the page's key by
    # that version instead of by all its columns, which are only gathered to render the page.
    version = getattr(order, "row_version", None) if pages is not None else None
    page = page_context(
        brand=brand,
        locale=locale,
        order=order_data(order) if order is not None and version is None else None,
        context=context,
        csrf_token=generate_csrf if pages is None else _marking(marks),
    )
    language = i18n.language_for(locale)
    env = live_environment(language)
    overrides = for_brand(published_overrides(), brand["id"])
    key = None
    if pages is not None:
        row = ("order row", order.reference, version) if version is not None else None
        key = page_key(name, language, page, overrides, row)
        kept = pages.get(key)
        if kept is not None:
            return _with_csrf(kept)
    if version is not None:
        page["order"] = order_data(order)
        page["fmt"] = money_formatter(order.currency, locale)
    html, fell_back = _render(env, name, page, overrides, order)
    if key is None or fell_back:
        return _with_csrf(html)
    if html.count(CSRF_MARK) != len(marks):
        # The token did not go into the page exactly as it came (an override changed or reused
        # it): the page is not kept, and renders with the real token.
        page["csrf_token"] = generate_csrf
        return _render(env, name, page, overrides, order)[0]
    pages.put(key, html)
    return _with_csrf(html)


def _allow_return_forms(order: Order) -> None:
    """The order's return addresses (the platform's redirect, a merchant's cancel and success
    URLs, already checked against the allow-lists when they came in) join the page's
    `form-action`: the Cancel form's redirect goes there (portal.errors adds them)."""
    data = order.platform_data or {}
    urls = [order.redirect_url, data.get("cancel_url"), data.get("success_url")]
    origins = set()
    for url in urls:
        if not isinstance(url, str):
            continue
        parts = urlsplit(url)
        local = parts.hostname in {"127.0.0.1", "localhost"}
        if parts.netloc and (parts.scheme == "https" or (parts.scheme == "http" and local)):
            origins.add(f"{parts.scheme}://{parts.netloc}")
    if origins:
        g.form_action_origins = tuple(sorted(origins))


# A per-process mark rendered where the CSRF token goes in a kept page (letters and digits only,
# so escaping leaves it as it is).
CSRF_MARK = "csrfmark" + secrets.token_hex(16)


def _marking(marks: list[bool]):
    def csrf_token() -> str:
        marks.append(True)
        return CSRF_MARK

    csrf_token.marks = True
    return csrf_token


def _with_csrf(html: str) -> str:
    return html.replace(CSRF_MARK, generate_csrf()) if CSRF_MARK in html else html


def page_key(name: str, language: str, page: dict, overrides: dict, row=None) -> bytes:
    """A digest of everything a page is rendered from but the callables (url_for, fmt and
    csrf_token depend only on what is digested, and the request's script root); `row` names
    the order's row and version when its columns are not in `page`."""
    data = [(k, v) for k, v in page.items() if not callable(v)]
    live = sorted((template, identity) for template, (identity, _source) in overrides.items())
    text = repr((name, language, request.script_root, live, data, row))
    return hashlib.blake2b(text.encode(), digest_size=20).digest()


def render_overridden(
    env, name: str, page: dict, overrides: dict, order: Order | None, kind: str = "template"
) -> tuple[str, list[str], bool]:
    """Render `name` with the marketers' `overrides`: (output, the overrides it used, whether a
    failing override fell back to the default). A failure is reported (`not_served`) and the
    default rendered instead; a failure with no override in play is the code's and is raised.
    Pages and emails both render through here."""
    used: list[str] = []
    used_token = overrides_used.set(used)
    try:
        try:
            return render_in(env, name, page, overrides), used, False
        except Exception as exc:
            if not used:
                raise
            not_served(used, describe(exc, used[-1]), order, kind)
            return render_in(env, name, page, {}), [], True
    finally:
        overrides_used.reset(used_token)


def _render(env, name: str, page: dict, overrides: dict, order: Order | None) -> tuple[str, bool]:
    """(HTML, whether a failing override fell back to the default). An override's output is
    checked against the default's (portal.branding.markup) before it is served."""
    html, used, fell_back = render_overridden(env, name, page, overrides, order)
    if fell_back:
        return html, True
    if not used:
        return html, False
    # The default page for the same data, with the token marks as they are (not counted twice).
    marking = getattr(page.get("csrf_token"), "marks", False)
    quiet = {**page, "csrf_token": lambda: CSRF_MARK} if marking else page
    default = render_in(env, name, quiet, {})
    found = markup.problems(html, default, page_rules())
    if found:
        not_served(used, f"{name}: " + " ".join(found[:5]), order)
        if marking:
            default = render_in(env, name, page, {})
        return default, True
    return html, False


def page_rules() -> markup.Rules:
    return markup.Rules()


# The alerts sent in this process, so a broken override alerts once, not on every page.
_alerted: LRUCache = LRUCache(256)
_alert_lock = threading.Lock()


def not_served(names: list[str], text: str, order: Order | None, kind: str = "template") -> None:
    """An override was not served (it failed, ran over its budget or produced refused markup):
    recorded on the override for the console, logged as an operator alert, and sent to
    PORTAL_ALERT_WEBHOOK_URL once per override and reason in this process."""
    log.error(
        "ALERT %s override failed or refused, rendering the default instead: %s",
        kind,
        text,
        extra={"order_id": order.id if order is not None else "-"},
    )
    _record_failure(names, text)
    key = (tuple(names), text)
    with _alert_lock:
        if key in _alerted:
            return
        _alerted[key] = True
    try:
        settings = current_app.config["PORTAL"]
    except RuntimeError:  # no app context (an email job on a thread of its own): log line only
        return
    url = settings.alert_webhook_url
    if url:
        payload = {
            "text": f"Checkout portal: template override {', '.join(names)} was not served "
            f"(learners get the default page): {text}"[:2000],
            "templates": names,
        }
        threading.Thread(target=_post_alert, args=(settings, url, payload), daemon=True).start()


def _post_alert(settings: Settings, url: str, payload: dict) -> None:
    from portal import outbound

    try:
        # The alert URL is an operator's, but it is still checked and pinned at send time.
        outbound.post(settings, url, json=payload, timeout=(3.05, 10))
    except Exception:  # noqa: BLE001 - the log line already carries the alert
        log.exception("alert webhook failed")
