"""Money: integer minor units plus an ISO 4217 code, with the currency's own exponent.

Babel knows each currency's exponent (JPY 0, USD 2, KWD 3) and formats for the learner's locale.
Never a float: conversions go through Decimal.
"""

from __future__ import annotations

import functools
import re
from decimal import ROUND_HALF_UP, Decimal

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency, get_currency_precision, list_currencies

# The ISO 4217 codes Stripe charges in (docs.stripe.com/currencies): no funds codes, metals,
# "no currency" (XXX) or test (XTS) codes, even though ISO lists them.
STRIPE_CURRENCIES = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BWP BYN
    BZD CAD CDF CHF CLP CNY COP CRC CVE CZK DJF DKK DOP DZD EGP ETB EUR FJD FKP GBP GEL GIP GMD
    GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR ISK JMD JOD JPY KES KGS KHR KMF KRW KWD KYD KZT LAK
    LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD
    OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SEK SGD SHP SLE SLL SOS SRD
    STD SZL THB TJS TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VND VUV WST XAF XCD XCG XOF XPF
    YER ZAR ZMW
    """.split()
)
_KNOWN = frozenset(list_currencies()) & STRIPE_CURRENCIES
# The largest amount anything in the portal handles, in minor units (Stripe's own ceiling is
# eight digits for most currencies and twelve for a few, such as IDR).
MAX_MINOR = 999_999_999_999
# The last second of year 9999: a Unix time beyond it is no date (datetime cannot hold it).
MAX_TIMESTAMP = 253_402_300_799
# A plain decimal amount: ASCII digits, one optional point; bounded before any conversion, so
# "1e10", "1e308", "Infinity", Arabic-Indic digits and 20-digit numbers never reach Decimal.
_AMOUNT = re.compile(r"(?a:[0-9]{1,15}(?:\.[0-9]{1,12})?)")


class MoneyError(ValueError):
    """An amount or currency that cannot be charged."""


def normalise_currency(code: str) -> str:
    """The upper-case code if Stripe charges in it, else MoneyError."""
    if not isinstance(code, str) or len(code.strip()) != 3:
        raise MoneyError(f"unknown currency {str(code)[:10]!r}")
    code = code.strip().upper()
    if code not in _KNOWN:
        raise MoneyError(f"unknown currency {code!r}")
    return code


def exponent(currency: str) -> int:
    return get_currency_precision(normalise_currency(currency))


def plain_decimal(amount) -> Decimal:
    """`amount` (text, int, float or Decimal) as a Decimal if it is a plain non-negative decimal
    in ASCII digits (at most 15 before the point, 12 after), else MoneyError. Checked before any
    conversion: no exponents (`1e10`, a float's `1e+308`), signs, NaN or Infinity, other
    scripts' digits (`١٤٩.٠٠`), or numbers too long to be a price."""
    if isinstance(amount, bool) or not isinstance(amount, int | float | str | Decimal):
        raise MoneyError(f"{amount!r} is not an amount")
    if isinstance(amount, int) and not 0 <= amount < 10**15:
        raise MoneyError("the amount is out of range")
    text = amount.strip() if isinstance(amount, str) else str(amount)
    if len(text) > 32 or not _AMOUNT.fullmatch(text):
        shown = text if len(text) <= 32 else text[:29] + "..."
        if text.replace(".", "", 1).isascii() and text.replace(".", "", 1).isdigit():
            raise MoneyError(f"{shown!r} has too many digits to be an amount")
        raise MoneyError(f"{shown!r} is not an amount such as 149.00 (ASCII digits only)")
    return Decimal(text)


def to_minor(amount: str | int | Decimal, currency: str) -> int:
    """'12.50' USD -> 1250; '1200' JPY -> 1200; too many decimals for the currency is an error.

    Only plain decimals in ASCII digits (at most 15 before the point, 6 after) are read: no
    exponents, signs, spaces inside, other scripts' digits or floats' `1e+16` forms."""
    value = plain_decimal(amount)
    text = str(amount).strip()
    scaled = value.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"{text!r} has more decimals than {currency.upper()} allows")
    if scaled > MAX_MINOR:
        raise MoneyError(f"{text!r} is more than the largest amount the portal takes")
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
