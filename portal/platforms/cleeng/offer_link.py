"""Opt-in: the first Cleeng order created from a link the publisher signed
(`PORTAL_CLEENG_OFFER_LINK_SECRET`, HMAC-SHA256; rotation: old,new).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

from flask import request

from portal.checkout import (
    CheckoutError,
)
from portal.config import Settings
from portal.http import UpstreamError
from portal.i18n import N_
from portal.models import utcnow
from portal.money import (
    MoneyError,
    normalise_currency,
)
from portal.platforms.cleeng.client import ORDER_ID, cleeng_id
from portal.platforms.cleeng.platform import CleengPlatform

log = logging.getLogger("portal.cleeng")


OFFER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
COUPON = re.compile(r"[A-Za-z0-9_-]{1,64}")
OFFER_LINK_MAX_SECONDS = 7 * 86400  # a signed link lives at most a week
OFFER_LINK_FIELDS = ("offerId", "customerId", "couponCode", "currency", "country", "expires")
COUNTRY = re.compile(r"[A-Z]{2}")


def offer_link_signature(params: dict, secret: str) -> str:
    """The publisher's signature of an offer link: hex HMAC-SHA256, keyed with
    `PORTAL_CLEENG_OFFER_LINK_SECRET`, of `offerId`, `customerId`, `couponCode`, `currency`,
    `country` (each empty when not given) and `expires` (Unix seconds), joined by newlines in
    that order."""
    message = "\n".join(str(params.get(name) or "") for name in OFFER_LINK_FIELDS)
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _known_currency(code: str) -> bool:
    try:
        return normalise_currency(code) == code
    except MoneyError:
        return False


def _offer_link_refused() -> CheckoutError:
    return CheckoutError(
        400,
        N_("This checkout link is not valid"),
        N_(
            "The link that brought you here is incomplete, damaged or too old. Please go back to "
            "the subscription page and choose your plan again."
        ),
    )


def unavailable() -> CheckoutError:
    """Cleeng could not be reached (or answered 5xx) while loading or creating an order."""
    return CheckoutError(
        503,
        N_("Checkout is temporarily unavailable"),
        N_(
            "We could not load your order from the subscription service. Please try again "
            "in a few minutes; you have not been charged."
        ),
    )


def order_from_offer(platform: CleengPlatform, settings: Settings) -> str:
    """The opt-in entry `?offerId=&customerId=[&couponCode=]&expires=&signature=`: a link the
    publisher's server signed. The portal creates the Cleeng order (`POST /3.1/orders`) and
    returns its id; every price still comes from Cleeng's answer, never from the link."""
    secrets = settings.cleeng_offer_link_secret
    if not secrets:
        raise CheckoutError(
            404,
            N_("Order not found"),
            N_(
                "We could not find this order. Please go back to the subscription page and "
                "choose your plan again."
            ),
        )
    args = request.args
    params = {name: args.get(name, "") for name in OFFER_LINK_FIELDS}
    given = args.get("signature", "").lower()
    now = int(utcnow().timestamp())
    if (
        not OFFER_ID.fullmatch(params["offerId"])
        or not ORDER_ID.fullmatch(params["customerId"])
        or (params["couponCode"] and not COUPON.fullmatch(params["couponCode"]))
        or (params["currency"] and not _known_currency(params["currency"]))
        or (params["country"] and not COUNTRY.fullmatch(params["country"]))
        or not (params["expires"].isascii() and params["expires"].isdigit())
        or len(params["expires"]) > 12
        or not now < int(params["expires"]) <= now + OFFER_LINK_MAX_SECONDS
        or not given
        or not any(
            hmac.compare_digest(given, offer_link_signature(params, secret)) for secret in secrets
        )
    ):
        raise _offer_link_refused()
    fields = {"customerId": cleeng_id(params["customerId"]), "offerId": params["offerId"]}
    if platform.payment_method_id:
        fields["paymentMethodId"] = cleeng_id(platform.payment_method_id)
    for name in ("couponCode", "currency", "country"):
        if params[name]:
            fields[name] = params[name]
    try:
        order = platform.client.create_order(fields)
    except UpstreamError as exc:
        if exc.status in {404, 422}:
            log.warning("Cleeng refused an order for offer %s: %s", params["offerId"], exc)
            raise CheckoutError(
                404,
                N_("This offer is not available"),
                N_(
                    "The subscription service does not offer this plan to you. Please go back "
                    "to the subscription page and choose your plan again."
                ),
            ) from exc
        log.error("Cleeng order for offer %s could not be created: %s", params["offerId"], exc)
        raise unavailable() from exc
    return str(order["id"])
