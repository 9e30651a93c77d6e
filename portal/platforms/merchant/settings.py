"""The merchant API's platform settings: who sends its receipts (`PORTAL_MERCHANT_RECEIPTS`); the
API's own settings (authorisations, pay links) are the core's (portal/config.py)."""

from __future__ import annotations

from portal.config import receipt_setting

SETTINGS = (receipt_setting("merchant"),)
