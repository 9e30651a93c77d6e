"""Opening an order: a platform's authoritative purchase data (`OrderDraft`) becomes an order,
or brings the existing one up to date while it is still open."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError

from portal import orders
from portal.db import db
from portal.models import Order, OrderState
from portal.money import normalise_currency
from portal.orders import timeline


@dataclass
class OrderDraft:
    """Authoritative purchase data, as a platform reported it."""

    platform: str
    platform_ref: str
    description: str
    currency: str
    amount_minor: int
    quantity: int = 1
    sku: str | None = None
    list_unit_minor: int | None = None
    promo_code: str | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    locale: str | None = None
    redirect_url: str | None = None
    platform_data: dict = field(default_factory=dict)
    # For platforms whose reference is new on every attempt: the learner and what they buy
    # (Order.learner_key). An order still payable or already paid for it is used again.
    learner_key: str | None = None


_UNKNOWN = object()


def _existing(draft: OrderDraft) -> Order | None:
    existing = orders.find(draft.platform, draft.platform_ref)
    if existing is None and draft.learner_key:
        existing = orders.find_for_learner(draft.platform, draft.learner_key)
    return existing


def open_order(draft: OrderDraft, existing=_UNKNOWN) -> Order:
    """Create the order for a platform purchase, or return the existing one (refreshed if open).
    `existing`: what `orders.find` just answered for this purchase, when the caller asked."""
    currency = normalise_currency(draft.currency)
    values = {
        "description": draft.description[:500],
        "sku": draft.sku,
        "quantity": draft.quantity,
        "currency": currency,
        "amount_minor": draft.amount_minor,
        "list_unit_minor": draft.list_unit_minor,
        "promo_code": draft.promo_code,
        "customer_email": draft.customer_email,
        "customer_name": draft.customer_name,
        "locale": draft.locale,
        "platform_data": draft.platform_data,
    }
    if draft.redirect_url:
        values["redirect_url"] = draft.redirect_url
    if existing is _UNKNOWN:
        existing = orders.find(draft.platform, draft.platform_ref)
    if existing is None and draft.learner_key:
        existing = orders.find_for_learner(draft.platform, draft.learner_key)
    if existing is None:
        try:
            return orders.create(
                {
                    "platform": draft.platform,
                    "platform_ref": draft.platform_ref,
                    "learner_key": draft.learner_key,
                    **values,
                }
            )
        except IntegrityError:
            # Two first visits raced (the same reference, or the same learner and purchase);
            # the other one created it.
            existing = _existing(draft)
            if existing is None:
                raise
    changed = {k: v for k, v in values.items() if getattr(existing, k) != v}
    if changed and existing.state == OrderState.OPEN:
        money_changed = bool({"amount_minor", "currency"} & changed.keys())
        with db.transaction() as session:
            extra = {"stripe_session_expires_at": None} if money_changed else {}
            orders.update(
                existing,
                session=session,
                expect={"state": OrderState.OPEN},
                **changed,
                **extra,
            )
            if money_changed:
                timeline.record(
                    existing.id,
                    "note",
                    "platform changed the amount; the review page shows the new one",
                    {"amount_minor": draft.amount_minor, "currency": currency},
                    session=session,
                )
        existing = orders.refresh(existing)
    elif changed.keys() & {"amount_minor", "currency"}:
        timeline.record(
            existing.id,
            "note",
            f"platform reports a different amount while the order is {existing.state}",
            {"amount_minor": draft.amount_minor, "currency": currency},
        )
    return existing
