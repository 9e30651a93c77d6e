"""Cleeng's settings (`PORTAL_CLEENG_*`) and their sandbox values."""

from __future__ import annotations

from portal.config import Setting, checked_url, receipt_setting, secret_list, url

SETTINGS = (
    Setting("CLEENG_PUBLISHER_TOKEN", None, str, secret=True),
    Setting("CLEENG_API_BASE", "https://api.sandbox.cleeng.com/3.1", url),
    Setting("CLEENG_PAYMENT_METHOD_ID", None, str),
    # HMAC key(s) of Cleeng's webhooks; rotation: old,new
    Setting("CLEENG_WEBHOOK_SECRET", (), secret_list, secret=True),
    Setting("CLEENG_RETURN_URL", None, checked_url),  # the page after payment (host allow-listed)
    # Opt-in: the portal creates the first Cleeng order from a link the publisher signed with
    # this key (HMAC-SHA256; rotation: old,new). Unset: /cleeng/checkout takes orderId only.
    Setting("CLEENG_OFFER_LINK_SECRET", (), secret_list, secret=True),
    receipt_setting("cleeng"),
)


def apply_sandbox_defaults(settings, environ, instance_path: str) -> dict:
    """PORTAL_SANDBOX=1: the stand-in's token, webhook key, payment method, API and return page
    (portal/sandbox/cleeng_api.py), as changes by setting name."""
    public = settings.public_url
    changes: dict = {}
    if not settings.cleeng_publisher_token:
        changes["CLEENG_PUBLISHER_TOKEN"] = "sandbox-cleeng-publisher-token"  # noqa: S105
    if not settings.cleeng_webhook_secret:
        changes["CLEENG_WEBHOOK_SECRET"] = ("sandbox-cleeng-webhook-secret",)
    if not settings.cleeng_payment_method_id:
        changes["CLEENG_PAYMENT_METHOD_ID"] = "900000001"
    if "PORTAL_CLEENG_API_BASE" not in environ:
        changes["CLEENG_API_BASE"] = public + "/sandbox/cleeng/3.1"
    if not settings.cleeng_return_url:
        changes["CLEENG_RETURN_URL"] = public + "/sandbox/cleeng/return"
    return changes
