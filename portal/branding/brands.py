"""Brands: validation of what a marketer enters (colours with WCAG contrast checks, a font stack
from a fixed list, a small PNG or SVG logo, https links, short plain-text copy), the brand an
order gets (by platform source, then the platform's "*", then the default brand, then the
settings), the plain dict templates see, and the generated per-brand stylesheet.

Colours reach the page as CSS custom properties in `/brand/<id>/theme.css`, never as inline
styles: the learner pages keep `style-src 'self'`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field

from sqlalchemy import select

from portal import i18n
from portal.branding import cache as branding_cache
from portal.config import Settings
from portal.db import db
from portal.models import ApiKey, Brand, BrandAssignment, Order
from portal.outbound import check_destination
from portal.platforms import registry
from portal.urls import UnsafeUrl

log = logging.getLogger("portal.branding")

HEX_COLOUR = re.compile(r"#[0-9a-f]{6}")
EMAIL = re.compile(r"[^@\s<>\"']+@[^@\s<>\"']+\.[^@\s<>\"']+")
WHITE = "#ffffff"
NEAR_BLACK = "#111111"

# The look of the default theme (static/portal.css), and of a brand nobody has edited yet.
DEFAULT_COLOURS = {
    "primary": "#3b37b8",
    "text": "#16192b",
    "background": "#f3f5f9",
    "accent": "#1a5fd0",
}

# System font stacks only: no web fonts, no third-party requests, nothing to download.
FONT_STACKS = {
    "system": (
        "System sans-serif",
        'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif',
    ),
    "humanist": (
        "Humanist sans-serif",
        'Seravek, "Gill Sans Nova", Ubuntu, Calibri, "DejaVu Sans", source-sans-pro, sans-serif',
    ),
    "geometric": (
        "Geometric sans-serif",
        'Avenir, Montserrat, Corbel, "URW Gothic", source-sans-pro, sans-serif',
    ),
    "transitional": (
        "Transitional serif",
        'Charter, "Bitstream Charter", "Sitka Text", Cambria, serif',
    ),
    "old-style": (
        "Old-style serif",
        '"Iowan Old Style", "Palatino Linotype", "URW Palladio L", P052, serif',
    ),
}

# Short plain-text blocks a marketer may set; always autoescaped, never markup.
COPY_BLOCKS = {
    "review_intro": "Under the review page's heading",
    "paid_note": "On the payment received page",
    "footer_note": "In every page's footer",
}
COPY_MAX = 400


def translated_languages() -> tuple[str, ...]:
    """The languages besides the source language (English) copy can be given in."""
    return i18n.languages()[1:]


def copy_key(block: str, language: str | None) -> str:
    """Where a copy block's text in `language` is kept in `Brand.copy_blocks`: the block's own
    key for the source language, `block:language` for the others."""
    return block if not language or language == i18n.languages()[0] else f"{block}:{language}"


def copy_keys() -> list[str]:
    return [copy_key(b, lang) for lang in (None, *translated_languages()) for b in COPY_BLOCKS]


def untranslated_copy(copy_blocks: dict | None) -> list[tuple[str, str]]:
    """(block, language) for each copy block given in English but not in `language`: the
    pages where a learner of that language would read English."""
    copy_blocks = copy_blocks or {}
    return [
        (block, language)
        for language in translated_languages()
        for block in COPY_BLOCKS
        if copy_blocks.get(block) and not copy_blocks.get(copy_key(block, language))
    ]


COPY_ACCEPTS = f"Plain text, up to {COPY_MAX} characters. Tags such as <b> are refused."
# Something a browser would read as a tag: `<` then a letter, `/`, `!` or `?`.
TAG = re.compile(r"<\s*[A-Za-z/!?]")
LOGO_MAX_BYTES = 32 * 1024
LOGO_TYPES = ("image/png", "image/svg+xml")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# An SVG logo is shown with <img> (which never runs scripts) and served with a sandboxing CSP; it
# is still refused when it carries anything active, so nobody can open it as a page that runs.
SVG_REFUSED = re.compile(
    rb"<script|<foreignobject|<iframe|<embed|<object|\son[a-z]+\s*=|javascript:|<!entity"
    rb"|(?:xlink:)?href\s*=\s*[\"'](?!#)",
    re.I,
)


def header_safe(value: str | None) -> bool:
    """No control or line-separator character anywhere: the value can go into a mail header
    (From's display name, Reply-To, a subject) without starting another header. Unicode's
    categories Cc (CR, LF, NUL, ...), Cf (invisible format marks), Zl and Zp (U+2028, U+2029)."""
    return not any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in value or "")


HEADER_UNSAFE = "Remove line breaks and control characters: this goes into email headers."


class BrandError(ValueError):
    """What the marketer entered cannot be saved; `problems` names each field."""

    def __init__(self, problems: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


# --- colours ----------------------------------------------------------------------------------


def _channel(value: int) -> float:
    c = value / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def luminance(colour: str) -> float:
    """WCAG 2 relative luminance of #rrggbb."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast(first: str, second: str) -> float:
    """WCAG 2 contrast ratio, from 1 to 21."""
    a, b = sorted((luminance(first), luminance(second)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def on_colour(background: str) -> str:
    """White or near-black, whichever reads better on `background` (button text)."""
    return WHITE if contrast(WHITE, background) >= contrast(NEAR_BLACK, background) else NEAR_BLACK


def mix(colour: str, other: str, amount: float) -> str:
    """`amount` (0..1) of `other` mixed into `colour`."""
    parts = []
    for i in (1, 3, 5):
        a, b = int(colour[i : i + 2], 16), int(other[i : i + 2], 16)
        parts.append(round(a + (b - a) * amount))
    return "#" + "".join(f"{p:02x}" for p in parts)


@dataclass
class ContrastCheck:
    label: str
    ratio: float
    minimum: float

    @property
    def ok(self) -> bool:
        return self.ratio >= self.minimum


def contrast_checks(colours: dict[str, str]) -> list[ContrastCheck]:
    """The pairs the learner pages actually draw (WCAG 2.2 AA: 4.5 for text, 3 for the focus
    ring and other non-text marks). Cards are white whatever the page background is."""
    primary, text, background, accent = (
        colours["primary"],
        colours["text"],
        colours["background"],
        colours["accent"],
    )
    return [
        ContrastCheck("Text on the page background", contrast(text, background), 4.5),
        ContrastCheck("Text on white cards", contrast(text, WHITE), 4.5),
        ContrastCheck(
            "Button text on the primary colour", contrast(on_colour(primary), primary), 4.5
        ),
        ContrastCheck("Links (primary colour) on white cards", contrast(primary, WHITE), 4.5),
        ContrastCheck(
            "Links (primary colour) on the page background", contrast(primary, background), 4.5
        ),
        ContrastCheck(
            "Focus ring (accent) on the page background", contrast(accent, background), 3.0
        ),
        ContrastCheck("Focus ring (accent) on white cards", contrast(accent, WHITE), 3.0),
    ]


# --- what a marketer enters -------------------------------------------------------------------


@dataclass
class BrandInput:
    name: str
    primary: str
    text: str
    background: str
    accent: str
    font_stack: str = "system"
    support_email: str | None = None
    terms_url: str | None = None
    privacy_url: str | None = None
    copy_blocks: dict[str, str] = field(default_factory=dict)
    logo: bytes | None = None  # a new upload; None keeps the current logo
    logo_type: str | None = None
    remove_logo: bool = False
    is_default: bool = False


def _https_url(value: str | None) -> str | None:
    if not (value or "").strip():
        return None
    try:  # as entered: a URL with a space or newline around it is refused, not trimmed
        # A learner follows it: a public https host only (portal.outbound's address check).
        return check_destination(value, loopback_ok=False, unresolvable_ok=True)
    except UnsafeUrl as exc:
        raise ValueError(f"must be a plain https:// address: {exc}") from None


def logo_type_of(data: bytes) -> str:
    """The logo's content type from its bytes (never from the uploader's claim)."""
    if data.startswith(PNG_MAGIC):
        return "image/png"
    head = data[:1024].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg")) and b"<svg" in data[:4096].lower():
        if SVG_REFUSED.search(data):
            raise ValueError("the SVG contains scripts, event handlers or external links")
        return "image/svg+xml"
    raise ValueError("upload a PNG or SVG image")


def clean(entry: BrandInput) -> BrandInput:
    """Check every field; raise BrandError naming each problem."""
    problems: dict[str, str] = {}
    # Checked before stripping: strip() would quietly drop a trailing CR/LF and keep one inside.
    for key in ("name", "support_email", "terms_url", "privacy_url"):
        if not header_safe(getattr(entry, key)):
            problems[key] = HEADER_UNSAFE
    entry.name = (entry.name or "").strip()
    if "name" not in problems and (not entry.name or len(entry.name) > 120):
        problems["name"] = "Enter a name of 1 to 120 characters."
    for key in ("primary", "text", "background", "accent"):
        value = (getattr(entry, key) or "").strip().lower()
        setattr(entry, key, value)
        if not HEX_COLOUR.fullmatch(value):
            problems[key] = "Enter a colour as #rrggbb."
    if entry.font_stack not in FONT_STACKS:
        problems["font_stack"] = "Choose one of the listed font stacks."
    email = (entry.support_email or "").strip()
    if "support_email" in problems:
        pass
    elif email and (len(email) > 320 or not EMAIL.fullmatch(email)):
        problems["support_email"] = "Enter an email address."
    entry.support_email = email or None
    for key in ("terms_url", "privacy_url"):
        if key in problems:
            continue
        try:
            setattr(entry, key, _https_url(getattr(entry, key)))
        except ValueError as exc:
            problems[key] = f"The address {exc}."
    blocks = {}
    allowed_keys = set(copy_keys())
    for key, value in (entry.copy_blocks or {}).items():
        if key not in allowed_keys:
            continue
        value = " ".join(str(value or "").split())
        if len(value) > COPY_MAX:
            problems[f"copy_{key}"] = f"Keep it under {COPY_MAX} characters."
        elif TAG.search(value):
            problems[f"copy_{key}"] = (
                "Plain text only: remove the tags (such as <b> or <a>); learners would see them "
                "as typed."
            )
        if value:
            blocks[key] = value
    entry.copy_blocks = blocks
    if entry.logo:
        if len(entry.logo) > LOGO_MAX_BYTES:
            problems["logo"] = f"The logo must be at most {LOGO_MAX_BYTES // 1024} KB."
        else:
            try:
                entry.logo_type = logo_type_of(entry.logo)
            except ValueError as exc:
                problems["logo"] = f"Not accepted: {exc}."
    if not any(k in problems for k in ("primary", "text", "background", "accent")):
        colours = {k: getattr(entry, k) for k in ("primary", "text", "background", "accent")}
        failing = [c for c in contrast_checks(colours) if not c.ok]
        if failing:
            problems["colours"] = "Not enough contrast: " + "; ".join(
                f"{c.label} is {c.ratio:.2f}:1 (needs {c.minimum:g}:1)" for c in failing
            )
    if problems:
        raise BrandError(problems)
    return entry


def colours_of(brand: Brand) -> dict[str, str]:
    return {
        "primary": brand.colour_primary,
        "text": brand.colour_text,
        "background": brand.colour_background,
        "accent": brand.colour_accent,
    }


# --- which brand an order gets ------------------------------------------------------------------


def source_key(order: Order | None) -> str | None:
    """The platform source an order came from, as its platform's spec says (`brand_source`: the
    OpenLearning institution, the merchant's API key); None where the platform has one source per
    deployment (Skilljar, Cleeng)."""
    if order is None:
        return None
    spec = registry.spec(order.platform)
    if spec is None or spec.brand_source is None:
        return None
    return spec.brand_source(order)


def find_brand(session, order: Order | None) -> Brand | None:
    return find_brand_and_name(session, order)[0]


def find_brand_and_name(session, order: Order | None) -> tuple[Brand | None, str | None]:
    """(the brand row, the source's own name when it borrows another brand's look). A source
    with a name of its own (a merchant key created with `--brand`) and no brand assigned to it
    borrows the platform's or the default brand's look only, under its own name: another
    brand's logo, support address, legal links and copy never appear on its pages or emails."""
    if order is not None:
        own = source_key(order)
        keys = [k for k in (own, "*") if k]
        rows = session.execute(
            select(BrandAssignment.source_key, Brand)
            .join(Brand, Brand.id == BrandAssignment.brand_id)
            .where(BrandAssignment.platform == order.platform, BrandAssignment.source_key.in_(keys))
        ).all()
        by_key = {key: brand for key, brand in rows}  # noqa: C416 - rows are Row tuples
        if own is not None and own in by_key:
            return by_key[own], None
        name = _own_name(session, order)
        if "*" in by_key:
            return by_key["*"], name
        default = session.scalar(select(Brand).where(Brand.is_default.is_(True)).order_by(Brand.id))
        return default, name
    default = session.scalar(select(Brand).where(Brand.is_default.is_(True)).order_by(Brand.id))
    return default, None


def _own_name(session, order: Order) -> str | None:
    key_id = getattr(order, "merchant_key_id", None)
    if order.platform != "merchant" or key_id is None:
        return None
    name = session.scalar(select(ApiKey.brand_name).where(ApiKey.id == key_id))
    return name if name and header_safe(name) else None


def settings_brand(settings: Settings) -> dict:
    """The brand when the database has none (or cannot be reached): PORTAL_BRAND_* settings and
    the default theme's colours."""
    return {
        "id": "default",
        "name": settings.brand_name,
        "support_email": settings.brand_support_email,
        "logo_url": None,
        "theme_url": None,
        "terms_url": None,
        "privacy_url": None,
        "blocks": dict.fromkeys(COPY_BLOCKS, ""),
    }


def brand_context(
    brand: Brand | None, settings: Settings, url_for, own_name: str | None = None
) -> dict:
    """The plain dict templates read as `brand` (strings only; no ORM object reaches a
    template). With `own_name`, the brand's look (colours, font) under that name, and none of
    its identity: the settings' support address, no logo, legal links or copy."""
    if own_name is not None:
        borrowed = settings_brand(settings)
        borrowed["name"] = own_name
        if brand is not None:
            borrowed["id"] = brand.id
            borrowed["theme_url"] = url_for("branding.theme", brand_id=brand.id, v=brand.version)
        return borrowed
    if brand is None:
        return settings_brand(settings)
    return {
        "id": brand.id,
        "name": brand.name,
        "support_email": brand.support_email or settings.brand_support_email,
        "logo_url": url_for("branding.logo", brand_id=brand.id, v=brand.version)
        if brand.logo
        else None,
        "theme_url": url_for("branding.theme", brand_id=brand.id, v=brand.version),
        "terms_url": brand.terms_url,
        "privacy_url": brand.privacy_url,
        "blocks": {key: (brand.copy_blocks or {}).get(key, "") for key in COPY_BLOCKS},
        "blocks_by_language": {
            language: {
                key: (brand.copy_blocks or {}).get(copy_key(key, language), "")
                for key in COPY_BLOCKS
            }
            for language in translated_languages()
        },
    }


def in_language(brand: dict, language: str) -> dict:
    """The brand as a page in `language` shows it: each copy block in that language where the
    marketer gave it, else in the source language."""
    translated = (brand.get("blocks_by_language") or {}).get(language)
    if not translated:
        return brand
    blocks = {key: translated.get(key) or text for key, text in brand["blocks"].items()}
    return {**brand, "blocks": blocks}


def brand_for(order: Order | None, settings: Settings, url_for) -> dict:
    """The order's brand as a template dict; the settings brand if the database fails (an
    error page must render even while the database is down). Kept for a few seconds per process
    (portal.branding.cache): the brand depends only on the order's platform and source."""

    def load() -> tuple[Brand | None, str | None]:
        with db.reader() as session:
            return find_brand_and_name(session, order)

    key = ("brand", order.platform if order is not None else None, source_key(order))
    try:
        brand, own_name = branding_cache.cache().get(key, load)
    except Exception:  # noqa: BLE001 - the page must still render
        log.exception("brand lookup failed: using the settings brand")
        brand, own_name = None, None
    return brand_context(brand, settings, url_for, own_name)


# --- the generated stylesheet -----------------------------------------------------------------


def theme_css(brand: Brand) -> str:
    """CSS custom properties for static/portal.css, from validated values only (hex colours and a
    font stack from FONT_STACKS): nothing a marketer types reaches the CSS verbatim."""
    colours = colours_of(brand)
    primary, text, background, accent = (
        colours["primary"],
        colours["text"],
        colours["background"],
        colours["accent"],
    )
    muted = mix(text, background, 0.25)
    if contrast(muted, background) < 4.5 or contrast(muted, WHITE) < 4.5:
        muted = text
    dark = mix(primary, "#000000", 0.2)
    stack = FONT_STACKS.get(brand.font_stack, FONT_STACKS["system"])[1]
    return (
        f"/* Brand {brand.id}, version {brand.version}: generated from the console. */\n"
        ":root {\n"
        f"  --brand: {primary};\n"
        f"  --brand-ink: {on_colour(primary)};\n"
        f"  --brand-dark: {dark};\n"
        f"  --brand-tint: {mix(primary, WHITE, 0.9)};\n"
        f"  --ink: {text};\n"
        f"  --muted: {muted};\n"
        f"  --wash: {background};\n"
        f"  --focus: {accent};\n"
        f"  font-family: {stack};\n"
        "}\n"
    )


def etag(brand: Brand) -> str:
    return hashlib.sha256(f"{brand.id}:{brand.version}".encode()).hexdigest()[:16]
