"""Emails: the same sandbox, overrides and fallback as the learner pages, without a request.

Pay links and receipts are rendered by the job worker, where there is no request (and often no
app context): no `url_for`, no session for a CSRF token, no Accept-Language. The locale is the
order's (else PORTAL_DEFAULT_LOCALE), links are absolute under PORTAL_PUBLIC_URL (a mail client
has no base URL), and the brand carries its colours for inline styles (mail clients ignore
linked stylesheets).
"""

from __future__ import annotations

import html
import logging
import re
from urllib.parse import quote, urlencode, urlsplit

from jinja2.sandbox import SecurityError

from portal import i18n
from portal.branding import brands, markup
from portal.branding.environment import live_environment
from portal.branding.render import (
    for_brand,
    load_overrides,
    money_formatter,
    not_served,
    order_data,
    plain,
    render_in,
    render_overridden,
)
from portal.config import Settings
from portal.db import db
from portal.models import Brand, Order

log = logging.getLogger("portal.branding")


def email_rules(settings: Settings, brand: dict) -> markup.Rules:
    """An email's links may go to the portal, the brand's own sites (its terms and privacy
    addresses) and the platforms' sites (PORTAL_REDIRECT_HOSTS), over https."""
    hosts = {urlsplit(settings.public_url).hostname or ""}
    for key in ("terms_url", "privacy_url"):
        if brand.get(key):
            hosts.add(urlsplit(brand[key]).hostname or "")
    hosts.update(settings.redirect_hosts or ())
    return markup.Rules(
        email=True,
        public_url=settings.public_url,
        link_hosts=frozenset(h.lower() for h in hosts if h),
    )


# The endpoints an email may link to, as paths under PORTAL_PUBLIC_URL. A test checks each one
# against the app's own URL map, so a renamed route cannot leave emails pointing nowhere.
EMAIL_PATHS = {
    "orders.review": "/orders/{reference}",
    "orders.status": "/orders/{reference}/status",
    "branding.logo": "/brand/{brand_id}/logo",
    "branding.theme": "/brand/{brand_id}/theme.css",
    "static": "/static/{filename}",
}


def public_url_for(settings: Settings):
    """A `url_for` for emails: absolute URLs of EMAIL_PATHS under PORTAL_PUBLIC_URL, plain values
    only; extra values become the query string."""
    base = settings.public_url.rstrip("/")

    def build(endpoint: str, **values) -> str:
        if endpoint not in EMAIL_PATHS:
            raise SecurityError(f"url_for({endpoint!r}) is not available to email templates")
        for value in values.values():
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise SecurityError("url_for takes text and numbers only")
        template = EMAIL_PATHS[endpoint]
        names = set(re.findall(r"{(\w+)}", template))
        missing = names - values.keys()
        if missing:
            raise ValueError(f"url_for({endpoint!r}) needs {', '.join(sorted(missing))}")
        path = template.format(
            **{
                name: quote(str(values[name]), safe="/" if name == "filename" else "")
                for name in names
            }
        )
        query = {key: value for key, value in values.items() if key not in names}
        return base + path + (f"?{urlencode(query)}" if query else "")

    return build


def email_colours(brand: Brand | None) -> dict[str, str]:
    """The brand's colours for inline styles: the page background around the message, the
    primary colour (links, the button, the header rule), button text that reads on it, body
    text and a muted text that still has 4.5:1 on the white message card."""
    colours = brands.colours_of(brand) if brand is not None else dict(brands.DEFAULT_COLOURS)
    text, background = colours["text"], colours["background"]
    muted = brands.mix(text, brands.WHITE, 0.3)
    if brands.contrast(muted, brands.WHITE) < 4.5:
        muted = text
    stack = brands.FONT_STACKS.get(
        brand.font_stack if brand is not None else "system", brands.FONT_STACKS["system"]
    )[1]
    return {
        "primary": colours["primary"],
        "on_primary": brands.on_colour(colours["primary"]),
        "text": text,
        "muted": muted,
        "background": background,
        "font": stack,
    }


def email_brand(order: Order, settings: Settings) -> tuple[dict, dict]:
    """The order's brand for an email, (brand dict, colours): the same choice as its pages
    (platform source, the platform's "*", the default brand, the settings), with absolute URLs.
    The settings brand if the database cannot be read: the message still goes."""
    try:
        with db.reader() as session:
            row, own_name = brands.find_brand_and_name(session, order)
            brand = brands.brand_context(row, settings, public_url_for(settings), own_name)
            colours = email_colours(row)
    except Exception:  # noqa: BLE001 - an email goes out in the default look rather than not
        log.exception("brand lookup for an email failed: using the settings brand")
        brand, colours = brands.settings_brand(settings), email_colours(None)
    return brand, colours


def email_context(
    *,
    settings: Settings,
    brand: dict,
    colours: dict,
    locale: str,
    order: dict,
    context: dict,
    preview: bool = False,
) -> dict:
    """The globals of an email template: those of a page (`brand`, `lang`, `locale`, `order`,
    `fmt`, `url_for`, ...), with absolute URLs, plus `colours`. An email has no form, so its
    `csrf_token()` is empty."""
    page = {key: plain(value) for key, value in context.items() if key != "fmt"}
    page.update(
        brand=brands.in_language(brand, i18n.language_for(locale)),
        colours=colours,
        lang=i18n.language_for(locale).replace("_", "-"),
        locale=locale,
        sandbox=bool(settings.sandbox),
        preview=preview,
        url_for=public_url_for(settings),
        csrf_token=lambda: "",
        order=order,
        fmt=money_formatter(order["currency"], locale),
    )
    return page


def email_overrides() -> dict[tuple[str, int | None], tuple[object, str]]:
    """The published overrides, read afresh: emails go out from the worker, often outside any
    app context (where the per-app cache of `published_overrides` lives), and a few messages a
    minute do not need a cache. Without the database, the defaults render."""
    try:
        return load_overrides()
    except Exception:  # noqa: BLE001 - the message still goes, in the default look
        log.exception("template overrides could not be loaded for an email: using the defaults")
        return {}


def text_part(rendered: str) -> str:
    """The sandbox autoescapes everything; a text/plain part is not HTML, so the escapes (of
    `&`, `<`, `>` and quotes in names and links) are undone."""
    return html.unescape(rendered)


def render_learner_email(
    name: str,
    *,
    order: Order,
    settings: Settings,
    locale: str | None = None,
    brand: tuple[dict, dict] | None = None,
    **context,
) -> str:
    """Email template `name` (`email/receipt.html`, `email/pay_link.txt`, ...) about `order`,
    outside any request: the order's locale and brand, the published overrides, and the same
    fail-safe as `render_learner`: an override that fails renders the default instead, logged
    and recorded for the console, so an email job never fails because of an override.
    `brand` is a (brand, colours) pair from `email_brand`, to look it up once per message."""
    locale = locale or order.locale or settings.default_locale
    brand_dict, colours = brand if brand is not None else email_brand(order, settings)
    page = email_context(
        settings=settings,
        brand=brand_dict,
        colours=colours,
        locale=locale,
        order=order_data(order),
        context=context,
    )
    env = live_environment(i18n.language_for(locale))
    overrides = for_brand(email_overrides(), brand_dict["id"])
    rendered, used, _ = render_overridden(env, name, page, overrides, order, "email template")
    if used:
        default = render_in(env, name, page, {})
        rules = email_rules(settings, brand_dict)
        if name.endswith(".txt"):
            found = markup.text_problems(rendered, default, rules)
        else:
            found = markup.problems(rendered, default, rules)
        if found:
            not_served(used, f"{name}: " + " ".join(found[:5]), order, "email template")
            rendered = default
    return text_part(rendered) if name.endswith(".txt") else rendered
