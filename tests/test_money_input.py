"""portal.money.parse_amount: an amount typed in the operator's locale, to minor units, through
Babel and Decimal (never a float)."""

from __future__ import annotations

import pytest

from portal.money import MoneyError, format_amount_input, parse_amount


@pytest.mark.parametrize(
    ("text", "currency", "locale", "minor"),
    [
        ("50,00", "EUR", "fr", 5000),
        ("1 234,56", "EUR", "fr", 123456),  # an ordinary space as the thousands separator
        ("1\u202f234,56", "EUR", "fr", 123456),
        ("12,50 €", "EUR", "fr", 1250),
        ("1.234,5", "EUR", "de", 123450),
        ("1,234.50", "USD", "en", 123450),
        ("USD 0.10", "USD", "en", 10),
        ("1200", "JPY", "ja", 1200),
        ("12.345", "KWD", "en", 12345),
        ("0.29", "USD", "en", 29),  # 0.29 * 100 is 28.999999999999996 as a float
    ],
)
def test_parse_amount(text, currency, locale, minor):
    assert parse_amount(text, currency, locale) == minor


@pytest.mark.parametrize(
    ("text", "currency", "locale"),
    [
        ("50,00", "EUR", "en"),
        ("50.00", "EUR", "fr"),
        ("-5", "USD", "en"),
        ("1e3", "USD", "en"),
        ("NaN", "USD", "en"),
        ("", "USD", "en"),
        ("$5", "EUR", "en"),
        ("12.5", "JPY", "en"),
        ("0,001", "EUR", "fr"),
    ],
)
def test_parse_amount_refuses(text, currency, locale):
    with pytest.raises(MoneyError):
        parse_amount(text, currency, locale)


def test_format_amount_input_round_trips():
    for minor, currency, locale in [(5000, "EUR", "fr"), (123456, "USD", "en"), (7, "JPY", "ja")]:
        assert parse_amount(format_amount_input(minor, currency, locale), currency, locale) == minor
    assert format_amount_input(5000, "EUR", "fr") == "50,00"
    assert format_amount_input(12345, "KWD", "en") == "12.345"
