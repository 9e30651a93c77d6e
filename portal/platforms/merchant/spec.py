"""What the merchant API's platform declares to the core (portal.platforms.registry). Its routes
are the merchant API itself (portal/api, /api/v1), part of the core."""

from __future__ import annotations

from portal.platforms import PlatformSpec
from portal.platforms.merchant import settings
from portal.platforms.merchant.platform import MerchantPlatform


def brand_source(order) -> str | None:
    """An order's brand source is the API key that created it."""
    key_id = getattr(order, "merchant_key_id", None)
    return str(key_id) if key_id is not None else None


SPEC = PlatformSpec(
    name=MerchantPlatform.name,
    label=MerchantPlatform.label,
    factory=MerchantPlatform,
    settings=settings.SETTINGS,
    sandbox_stand_in="portal.sandbox.merchant_api",
    brand_source=brand_source,
    brand_source_help="a merchant API key id",
)
