"""Skilljar's settings (`PORTAL_SKILLJAR_*`) and their sandbox values."""

from __future__ import annotations

from portal.config import Setting, receipt_setting, url

SETTINGS = (
    Setting("SKILLJAR_API_KEY", None, str, secret=True),
    Setting("SKILLJAR_API_BASE", "https://api.skilljar.com", url),
    receipt_setting("skilljar"),
)


def apply_sandbox_defaults(settings, environ, instance_path: str) -> dict:
    """PORTAL_SANDBOX=1: the stand-in's key and API (portal/sandbox/skilljar_api.py), as changes by
    setting name."""
    changes = {}
    if not settings.skilljar_api_key:
        changes["SKILLJAR_API_KEY"] = "sandbox-skilljar-key"
    if "PORTAL_SKILLJAR_API_BASE" not in environ:
        changes["SKILLJAR_API_BASE"] = settings.public_url + "/sandbox/skilljar"
    return changes
