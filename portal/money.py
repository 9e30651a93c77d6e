"""Money: integer minor units plus an ISO 4217 code, with the currency's own exponent.

Babel knows each currency's exponent (JPY 0, USD 2, KWD 3) and formats for the learner's locale.
Never a float: conversions go through Decimal.
"""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency, get_currency_precision, list_currencies

_KNOWN = frozenset(list_currencies())


class MoneyError(ValueError):
    """An amount or currency that cannot be charged."""


def normalise_currency(code: str) -> str:
    code = (code or "").strip().upper()
    if len(code) != 3 or code not in _KNOWN:
        raise MoneyError(f"unknown currency {code!r}")
    return code


def exponent(currency: str) -> int:
    return get_currency_precision(normalise_currency(currency))


def to_minor(amount: str | int | Decimal, currency: str) -> int:
    """'12.50' USD -> 1250; '1200' JPY -> 1200; too many decimals for the currency is an error."""
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise MoneyError(f"{amount!r} is not an amount") from None
    if not value.is_finite() or value < 0:
        raise MoneyError(f"{amount!r} is not a payable amount")
    scaled = value.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"{amount!r} has more decimals than {currency.upper()} allows")
    return int(scaled)


def to_decimal(amount_minor: int, currency: str) -> Decimal:
    return Decimal(int(amount_minor)).scaleb(-exponent(currency))


def format_money(amount_minor: int, currency: str, locale: str = "en") -> str:
    return _format_money(int(amount_minor), str(currency), str(locale))


@functools.lru_cache(maxsize=4096)
def _format_money(amount_minor: int, currency: str, locale: str) -> str:
    """Babel's formatting is pure and takes ~0.1 ms; a page formats the same few amounts."""
    try:
        Locale.parse(locale.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        locale = "en"
    return format_currency(
        to_decimal(amount_minor, currency), currency.upper(), locale=locale.replace("-", "_")
    )


def percent_of(amount_minor: int, percent: Decimal) -> int:
    """Tax on an amount, rounded half-up to the minor unit."""
    return int((Decimal(amount_minor) * percent / Decimal(100)).quantize(0, ROUND_HALF_UP))


def parse_amount(text: str, currency: str, locale: str) -> int:
    """An amount typed by someone in `locale` ("50,00" in French, "1,234.50" in English) in
    `currency`'s minor units, through Babel's strict parser and Decimal: never a float. Spaces of
    any kind (a French thousands separator) and the currency's code or symbol may be typed too."""
    from babel.numbers import NumberFormatError, get_currency_symbol, parse_decimal

    currency = normalise_currency(currency)
    babel_locale = locale.replace("-", "_")
    cleaned = "".join(str(text or "").split())
    for mark in (currency, get_currency_symbol(currency, locale=babel_locale)):
        cleaned = cleaned.replace(mark, "")
    symbols = Locale.parse(babel_locale).number_symbols.get("latn", {})
    allowed = set("0123456789") | {symbols.get("decimal", "."), symbols.get("group", ",")}
    example = format_amount_input(123456 * 10 ** max(exponent(currency) - 2, 0), currency, locale)
    problem = MoneyError(f"{text!r} is not an amount as written here: write it like {example}")
    if not cleaned or not set(cleaned) <= allowed:
        raise problem
    try:
        value = parse_decimal(cleaned, locale=babel_locale, strict=True)
    except NumberFormatError:
        raise problem from None
    try:
        return to_minor(str(value), currency)
    except MoneyError:
        raise MoneyError(f"{text!r} has more decimals than {currency} allows") from None


def format_amount_input(amount_minor: int, currency: str, locale: str) -> str:
    """An amount as someone in `locale` types it, without grouping: 5000 EUR in fr -> "50,00"."""
    from babel.numbers import format_decimal

    places = exponent(currency)
    pattern = "0" + ("." + "0" * places if places else "")
    return format_decimal(
        to_decimal(amount_minor, currency), format=pattern, locale=locale.replace("-", "_")
    )
