"""OpenLearning's settings (`PORTAL_OPENLEARNING_*`) and their sandbox values."""

from __future__ import annotations

from portal.config import Setting, non_negative_int, receipt_setting, url

SETTINGS = (
    Setting("OPENLEARNING_PUBLIC_KEY", None, str),
    Setting("OPENLEARNING_PUBLIC_KEY_FILE", None, str),
    Setting("OPENLEARNING_API_KEY", None, str, secret=True),
    Setting("OPENLEARNING_API_BASE", "https://api.openlearning.com/v2.2", url),
    Setting("OPENLEARNING_AUDIENCE", None, str),
    Setting("OPENLEARNING_JWKS_URL", None, url),
    Setting("OPENLEARNING_LEEWAY_SECONDS", 30, non_negative_int),
    receipt_setting("openlearning"),
)
