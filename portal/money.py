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
