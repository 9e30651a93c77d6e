"""Languages: which locale a learner gets, and the gettext catalogues for it.

The locale comes from the platform when it sends one, then from the browser's `Accept-Language`
(negotiated against every locale Babel knows, so money and dates format the learner's way and
Stripe's page gets the same language), then `PORTAL_DEFAULT_LOCALE`. The page's own language is
the closest catalogue in `translations/` (English when there is none): `fr_CA` reads French,
`de` reads English with German number formats.

Catalogues are Babel's gettext tooling: `babel.cfg` extracts, `translations/<lang>/LC_MESSAGES/
messages.po` holds each language, and `pybabel compile -d translations` (the Makefile's install
step and the test session) builds the `.mo` files read here.
"""

from __future__ import annotations

import functools
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.localedata import locale_identifiers
from babel.support import NullTranslations, Translations

TRANSLATIONS_DIR = Path(__file__).resolve().parent.parent / "translations"
SOURCE_LANGUAGE = "en"


@functools.cache
def _known_locales() -> list[str]:
    return locale_identifiers()


@functools.cache
def languages() -> tuple[str, ...]:
    """The languages learner pages are written in: English plus every compiled catalogue (read
    once per process: catalogues ship with a release)."""
    found = sorted(
        path.parent.parent.name for path in TRANSLATIONS_DIR.glob("*/LC_MESSAGES/messages.mo")
    )
    return (SOURCE_LANGUAGE, *[lang for lang in found if lang != SOURCE_LANGUAGE])


@functools.lru_cache(maxsize=1024)
def parse(value: str | None) -> str | None:
    """A locale identifier Babel knows (`fr-CA` -> `fr_CA`), or None."""
    if not value:
        return None
    text = str(value).strip().replace("-", "_")[:16]
    try:
        return str(Locale.parse(text))
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def negotiate(platform_locale: str | None, accept_languages, default: str) -> str:
    """The learner's locale: the platform's, then the browser's preference list (pairs of
    (language, quality) as Werkzeug gives them), then the default."""
    chosen = parse(platform_locale)
    if chosen:
        return chosen
    preferred = tuple(lang.replace("-", "_") for lang, _q in accept_languages or ())
    if preferred:
        match = _negotiated(preferred)
        if match:
            return match
    return parse(default) or SOURCE_LANGUAGE


@functools.lru_cache(maxsize=1024)
def _negotiated(preferred: tuple[str, ...]) -> str | None:
    """Babel's choice among every locale it knows (a few hundred: worth asking once for each
    browser preference list seen, not on every page)."""
    match = Locale.negotiate(list(preferred), _known_locales(), sep="_")
    return str(match) if match else None


def language_for(locale: str | None) -> str:
    """The catalogue a page in `locale` is written in."""
    available = languages()
    parsed = parse(locale)
    if parsed:
        if parsed in available:
            return parsed
        base = parsed.split("_")[0]
        if base in available:
            return base
    return SOURCE_LANGUAGE


@functools.cache
def translations(language: str) -> NullTranslations:
    if language == SOURCE_LANGUAGE:
        return NullTranslations()
    loaded = Translations.load(str(TRANSLATIONS_DIR), [language])
    return loaded


def gettext(language: str, message: str) -> str:
    return translations(language).gettext(message)


def N_(message: str) -> str:
    """Marks `message` for the catalogue without translating it: texts raised in Python (a
    `CheckoutError`'s title and message, an email's subject) stay English in the code, in logs
    and in JSON answers for developers, and are translated where a learner reads them, in the
    learner's language (`portal.errors.render_error`, `portal.mail`)."""
    return message
