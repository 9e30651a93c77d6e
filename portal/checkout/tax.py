"""Tax on the review page and in the Checkout Session: `none`, `fixed` (a rate per country,
chosen by the learner) or `stripe` (Stripe Tax computes it)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from portal.checkout.common import CheckoutError
from portal.config import Settings
from portal.i18n import N_
from portal.models import Order
from portal.money import percent_of


@dataclass(frozen=True)
class TaxQuote:
    mode: str
    country: str | None = None
    rate: Decimal | None = None
    amount_minor: int = 0

    @property
    def label(self) -> str | None:
        if self.mode != "fixed" or self.rate is None:
            return None
        return f"Tax ({self.country} {self.rate.normalize():f}%)"


def tax_countries(settings: Settings) -> list[str]:
    return list(settings.tax_rates.keys())


def quote_tax(settings: Settings, order: Order, country: str | None) -> TaxQuote:
    mode = settings.tax_mode
    if mode != "fixed":
        return TaxQuote(mode=mode)
    rates = settings.tax_rates
    if country is None:
        country = order.tax_country or next(iter(rates))
    country = country.strip().upper()
    if country not in rates:
        raise CheckoutError(
            400,
            N_("Unknown country"),
            N_("Please choose your country from the list and try again."),
        )
    rate = rates[country]
    return TaxQuote(mode, country, rate, percent_of(order.amount_minor, rate))
