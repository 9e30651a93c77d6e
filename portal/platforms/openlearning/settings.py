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


def apply_sandbox_defaults(settings: dict, environ, instance_path: str) -> None:
    """PORTAL_SANDBOX=1: the stand-in's key, institution, API and signing key
    (portal/sandbox/openlearning_api.py)."""
    from portal.sandbox.openlearning_api import apply_sandbox_key

    if not settings["OPENLEARNING_API_KEY"]:
        settings["OPENLEARNING_API_KEY"] = "sandbox-openlearning-key"
    if not settings["OPENLEARNING_AUDIENCE"]:
        settings["OPENLEARNING_AUDIENCE"] = "sandbox-institution"
    if "PORTAL_OPENLEARNING_API_BASE" not in environ:
        settings["OPENLEARNING_API_BASE"] = settings["PUBLIC_URL"] + "/sandbox/openlearning/v2.2"
    apply_sandbox_key(settings, instance_path)
