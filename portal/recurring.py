"""What a recurring order costs after today, and from when: "then €12.10 per month from
8 January 2027", or after a free trial "free until 15 December 2026, then €121.00 per year".

A platform that sells subscriptions stores `platform_data["recurring"]` with the renewal price
(tax included, in minor units), the billing period and the free trial's length, all from the
platform's own answer; `terms` turns that into dates from the day the learner reviews the order.
Pages show it through `templates/_macros/recurring.html`, formatted by Babel in the learner's
locale.
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta

# Billing periods: (unit, count). Cleeng's offer periods are these names.
PERIODS = {
    "day": ("day", 1),
    "week": ("day", 7),
    "2weeks": ("day", 14),
    "month": ("month", 1),
    "3months": ("month", 3),
    "6months": ("month", 6),
    "year": ("month", 12),
}
MAX_TRIAL_DAYS = 3660


def add_period(start: date, period: str, times: int = 1) -> date:
    """`start` plus `times` billing periods: whole calendar months (31 January + 1 month is the
    last day of February), or days."""
    unit, count = PERIODS[period]
    if unit == "day":
        return start + timedelta(days=count * times)
    months = start.month - 1 + count * times
    year, month = start.year + months // 12, months % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def plan(*, amount_minor: int | None, period, trial_days=None, trial_periods=None) -> dict | None:
    """The stored form (plain values), or None when the period is not one we can date."""
    if period not in PERIODS or amount_minor is None or amount_minor < 0:
        return None
    days = trial_days if isinstance(trial_days, int) and 0 < trial_days <= MAX_TRIAL_DAYS else 0
    periods = trial_periods if isinstance(trial_periods, int) and 0 < trial_periods <= 24 else 0
    return {
        "amount_minor": int(amount_minor),
        "period": period,
        "trial_days": days,
        "trial_periods": 0 if days else periods,
    }


def terms(stored, today: date) -> dict | None:
    """For the page: {amount_minor, period, from (ISO date: the first charge at the full price),
    trial_end (ISO date or None), discounted_periods (how many charges at today's price)}.
    Every key is always there (strict templates)."""
    if not isinstance(stored, dict) or stored.get("period") not in PERIODS:
        return None
    amount = stored.get("amount_minor")
    if not isinstance(amount, int) or isinstance(amount, bool):
        return None
    period = stored["period"]
    trial_end = None
    if stored.get("trial_days"):
        trial_end = today + timedelta(days=int(stored["trial_days"]))
    elif stored.get("trial_periods"):
        trial_end = add_period(today, period, int(stored["trial_periods"]))
    # A discount for several periods: today's price is charged that many times in all.
    discounted = stored.get("discounted_periods")
    times = discounted if isinstance(discounted, int) and 1 < discounted <= 24 else 1
    starts = trial_end or add_period(today, period, times)
    return {
        "amount_minor": amount,
        "period": period,
        "from": starts.isoformat(),
        "trial_end": trial_end.isoformat() if trial_end else None,
        "discounted_periods": 1 if trial_end else times,
    }
