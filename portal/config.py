"""Settings: defaults in code, then `PORTAL_*` environment variables (and an optional `.env`).

Every setting is parsed and checked once at start-up; a missing or malformed value stops the app
with a `ConfigError` that names the variable, so an operator never discovers a typo at payment time.
The result is a frozen `Settings` object, one typed attribute per setting in lower case
(`PORTAL_STRIPE_SECRET_KEY` -> `settings.stripe_secret_key`).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from urllib.parse import urlsplit


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, eq=False)
class Setting:
    """One `PORTAL_<name>` setting: its default, the parser that checks a given value, and whether
    the value is a secret (masked in logs and on the console's settings page)."""

    name: str
    default: object
    parse: Callable[[object], object]
    secret: bool = False
    # The value's type: the parser's return annotation unless given (`| None` added when the
    # default is None).
    type: object = None

    def __post_init__(self):
        kind = self.type
        if kind is None:
            kind = self.parse if isinstance(self.parse, type) else None
            if kind is None:
                kind = typing.get_type_hints(self.parse).get("return", object)
        if self.default is None and kind is not object:
            kind = kind | None
        object.__setattr__(self, "type", kind)

    @property
    def attribute(self) -> str:
        """The attribute of `Settings` that holds this setting's value."""
        return self.name.lower()


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"", "0", "false", "no", "off"}:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _url(value) -> str:
    text = str(value).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("expected an absolute http(s) URL")
    return text


def _checked_url(value) -> str:
    """A URL that others' hands reach (a redirect target, a webhook): portal.urls' check, taken
    as written (no trimming). The alert webhook's addresses are checked in `validate`."""
    from portal.urls import UnsafeUrl, check_url

    try:
        return check_url(str(value), allow_http="always").url
    except UnsafeUrl as exc:
        raise ValueError(str(exc)) from None


def _hosts(value) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    hosts = tuple(h.strip().lower() for h in items if h.strip())
    for host in hosts:
        if "/" in host or " " in host:
            raise ValueError(f"{host!r} is not a host name")
    return hosts


def _float(value) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _int(value) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _tax_mode(value) -> str:
    mode = str(value).strip().lower()
    if mode not in {"none", "fixed", "stripe"}:
        raise ValueError("expected none, fixed or stripe")
    return mode


def _tax_rates(value) -> dict[str, Decimal]:
    """`GB:20,DE:19,US:0` -> {"GB": Decimal("20"), ...}: percentages per ISO country code."""
    if isinstance(value, dict):
        return {k.upper(): Decimal(str(v)) for k, v in value.items()}
    rates: dict[str, Decimal] = {}
    for item in str(value).split(","):
        if not item.strip():
            continue
        country, _, rate = item.partition(":")
        country = country.strip().upper()
        if len(country) != 2 or not country.isalpha():
            raise ValueError(f"{country!r} is not a two-letter country code")
        try:
            percent = Decimal(rate.strip())
        except InvalidOperation:
            raise ValueError(f"{rate!r} is not a percentage") from None
        if not Decimal(0) <= percent < Decimal(100):
            raise ValueError(f"{rate!r} is not between 0 and 100")
        rates[country] = percent
    return rates


def _amounts(value) -> dict[str, int]:
    """`USD:100,EUR:90.50` -> {"USD": 10000, "EUR": 9050}: an amount per currency, in its minor
    units; `none` for no amount in any currency."""
    from portal.money import MoneyError, normalise_currency, to_minor

    if isinstance(value, dict):
        return {normalise_currency(k): int(v) for k, v in value.items()}
    if str(value).strip().lower() == "none":
        return {}
    amounts: dict[str, int] = {}
    for item in str(value).split(","):
        if not item.strip():
            continue
        code, _, amount = item.partition(":")
        try:
            currency = normalise_currency(code)
            amounts[currency] = to_minor(amount.strip(), currency)
        except MoneyError as exc:
            raise ValueError(f"{item.strip()!r}: {exc}") from None
    return amounts


def _secrets(value) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        return tuple(value)
    return tuple(s.strip() for s in str(value).split(",") if s.strip())


def _smtp_url(value) -> str:
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise ValueError("expected smtp://[user:password@]host[:port] or smtps://...")
    return text


def _rate_limit(value) -> str:
    """A Flask-Limiter rate: `120/minute`, `10 per second;500/hour`."""
    from limits import parse_many

    text = str(value).strip()
    try:
        if not parse_many(text):
            raise ValueError
    except ValueError:
        raise ValueError("expected a rate such as 120/minute or 10/second;500/hour") from None
    return text


def _storage_url(value) -> str:
    text = str(value).strip()
    scheme = text.partition("://")[0]
    if scheme not in {"memory", "redis", "rediss", "redis+sentinel", "redis+cluster"}:
        raise ValueError("expected memory:// or redis://host:6379/0")
    return text


def _positive_int(value) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _log_format(value) -> str:
    text = str(value).strip().lower()
    if text not in {"json", "text"}:
        raise ValueError("expected json or text")
    return text


def _origins(value) -> tuple[str, ...]:
    """`https://stats.example.com,https://cdn.example.com`: extra Content-Security-Policy
    origins (https only, no paths, no wildcards)."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    origins = tuple(item.strip().rstrip("/").lower() for item in items if item.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if (
            parts.scheme != "https"
            or not parts.hostname
            or parts.path
            or parts.query
            or "*" in origin
            or any(c in origin for c in " ;'\"")
        ):
            raise ValueError(f"{origin!r} is not an https origin such as https://stats.example.com")
    return origins


ROLES = ("admin", "operator", "marketer")


def _role_map(value) -> dict[str, str]:
    """`portal-admins:admin,support:operator` -> {"portal-admins": "admin", ...}: identity
    provider group (or claim value) to operator console role."""
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for item in str(value).split(","):
            if item.strip():
                group, sep, role = item.rpartition(":")
                if not sep:
                    raise ValueError(f"{item.strip()!r} is not GROUP:ROLE")
                items.append((group, role))
    mapping: dict[str, str] = {}
    for group, role in items:
        group, role = str(group).strip(), str(role).strip().lower()
        if not group:
            raise ValueError("a group name is empty")
        if role not in ROLES:
            raise ValueError(f"{role!r} is not one of {', '.join(ROLES)}")
        mapping[group] = role
    return mapping


# name (without the PORTAL_ prefix) -> (default, parser). `None` default means "no value".
RECEIPT_SENDERS = ("portal", "stripe", "platform", "none")  # see portal/receipts.py


def _receipt_sender(value) -> str:
    chosen = str(value).strip().lower()
    if chosen not in RECEIPT_SENDERS:
        raise ValueError(f"must be one of {', '.join(RECEIPT_SENDERS)}, not {value!r}")
    return chosen


SETTINGS: tuple[Setting, ...] = (
    Setting("SECRET_KEY", None, str, secret=True),
    Setting("DATABASE_URL", None, str),
    Setting("PUBLIC_URL", "http://127.0.0.1:5000", _url),
    Setting("SANDBOX", False, _bool),
    Setting("STRIPE_SECRET_KEY", None, str, secret=True),
    Setting("STRIPE_WEBHOOK_SECRET", (), _secrets, secret=True),
    Setting("STRIPE_API_BASE", "https://api.stripe.com", _url),
    Setting("STRIPE_SESSION_MINUTES", 60, _int),
    # Abandoned-checkout recovery, opt-in per brand: brand ids (comma-separated), or * for all.
    Setting("CHECKOUT_RECOVERY_BRANDS", (), _secrets),
    Setting("REDIRECT_HOSTS", (), _hosts),
    Setting("RETRY_BASE_SECONDS", 30.0, _float),
    Setting("RETRY_MAX_SECONDS", 3600.0, _float),
    Setting("RETRY_MAX_ATTEMPTS", 12, _int),
    Setting("JOB_LEASE_SECONDS", 120, _int),
    Setting("INLINE_FULFIL_SECONDS", 4.0, _float),
    Setting("HTTP_CONNECT_TIMEOUT", 3.05, _float),
    Setting("HTTP_READ_TIMEOUT", 15.0, _float),
    # Serving (portal/ratelimit.py, portal/observability.py): pools, limits, logs.
    Setting(
        "HTTP_POOL_SIZE", None, _positive_int
    ),  # per upstream host; default: gunicorn's threads
    Setting(
        "DB_POOL_SIZE", None, _positive_int
    ),  # per process; default: gunicorn's threads, at most 8
    Setting("RATELIMIT_ENABLED", True, _bool),
    Setting(
        "RATELIMIT_STORAGE_URL", "memory://", _storage_url, secret=True
    ),  # redis://host:6379/0 for many hosts
    Setting(
        "RATELIMIT_ENTRY", "120/minute", _rate_limit
    ),  # each entry point and pay, per client IP
    Setting("RATELIMIT_API", "1200/minute", _rate_limit),  # the merchant API, per client IP
    Setting("RATELIMIT_LOGIN", "20/minute", _rate_limit),  # console password sign-in, per client IP
    Setting("WEBHOOK_MAX_BYTES", 256 * 1024, _positive_int),
    Setting("LOG_FORMAT", "json", _log_format),
    Setting("ALERT_WEBHOOK_URL", None, _checked_url),  # checked by portal.urls and portal.outbound
    # Outbound requests (alert and merchant webhooks) may go to loopback addresses: sandbox, tests.
    Setting("OUTBOUND_ALLOW_LOOPBACK", None, _bool),  # default: on with PORTAL_SANDBOX=1, else off
    Setting("TAX_MODE", "none", _tax_mode),
    Setting("TAX_RATES", {}, _tax_rates),
    Setting("DEFAULT_LOCALE", "en", str),
    Setting("BRAND_NAME", "Secure checkout", str),
    Setting("BRAND_SUPPORT_EMAIL", None, str),
    Setting("BRAND_HOME_URL", None, _url),  # error pages link here when no platform page is known
    Setting("BRANDING_CACHE_SECONDS", 5.0, _float),  # brands and published overrides, per process
    Setting(
        "ORDER_CHANGE_LISTENER", True, _bool
    ),  # PostgreSQL: hear order changes (portal.order_changes)
    Setting("SANDBOX_LATENCY_MS", 0, _int),
    Setting("SANDBOX_FAULT_RATE", 0.0, _float),
    Setting("SANDBOX_WEBHOOK_DELAY_SECONDS", 1.0, float),  # negative: never deliver
    Setting("SANDBOX_DATABASE_URL", None, str),
    # The operator console (portal/admin): sessions, sign-in lockout, single sign-on, /metrics.
    Setting("ADMIN_IDLE_MINUTES", 30, _int),
    Setting("ADMIN_SESSION_HOURS", 12, _int),
    Setting("ADMIN_LOGIN_MAX_FAILURES", 5, _int),
    Setting("ADMIN_LOGIN_IP_MAX_FAILURES", 20, _int),
    Setting("ADMIN_LOCKOUT_MINUTES", 15, _int),
    Setting("TRUSTED_PROXY_HOPS", 0, _int),
    Setting("METRICS_TOKEN", None, str, secret=True),
    Setting("OIDC_ISSUER", None, _url),
    Setting("OIDC_METADATA_URL", None, _url),
    Setting("OIDC_CLIENT_ID", None, str),
    Setting("OIDC_CLIENT_SECRET", None, str, secret=True),
    Setting("OIDC_SCOPES", "openid email profile", str),
    Setting("OIDC_ROLE_CLAIM", "groups", str),
    Setting("OIDC_ROLE_MAP", {}, _role_map),
    # The merchant API (portal/api), pay-by-link email (portal/mail.py).
    Setting(
        "AUTH_CAPTURE_DAYS", 7, _int
    ),  # authorised, not captured after this many days: cancelled
    # An increase of an authorised total up to this much (per currency; the Credit Key seed's
    # $100) raises the hold in place; more sends the customer a new pay link to approve.
    Setting("AUTH_INCREASE_LIMIT", {"USD": 10000}, _amounts),
    Setting(
        "AUTH_INCREASE_LIMIT_PERCENT", 0, _int
    ),  # increase an authorisation in place up to this
    Setting(
        "PAY_LINK_DAYS", 7, _int
    ),  # an unpaid checkout session (link or redirect) expires after
    Setting(
        "SMTP_URL", None, _smtp_url, secret=True
    ),  # smtp://user:pass@host:587 (STARTTLS if offered), smtps://
    Setting("MAIL_FROM", "Checkout <no-reply@localhost>", str),
    # Learner pages' Content-Security-Policy: extra origins are an admin's deployment setting.
    Setting("CSP_SCRIPT_ORIGINS", (), _origins),  # e.g. an analytics script
    Setting("CSP_IMG_ORIGINS", (), _origins),
    Setting("CSP_CONNECT_ORIGINS", (), _origins),  # where such a script sends its beacons
)


def receipt_setting(platform: str) -> Setting:
    """Who sends a platform source's receipts: `PORTAL_<PLATFORM>_RECEIPTS` (portal/receipts.py)."""
    return Setting(f"{platform.upper()}_RECEIPTS", "portal", _receipt_sender)


# The parsers the platform packages declare their settings with (portal/platforms/*/settings.py).
url, checked_url, secret_list, non_negative_int = _url, _checked_url, _secrets, _int


@dataclass(frozen=True)
class Settings:
    """The parsed settings: one attribute per declared `Setting`, named as the setting in lower
    case. Built by `load_settings`; read-only (`dataclasses.replace` makes an adjusted copy)."""


@cache
def settings_class(declarations: tuple[Setting, ...]) -> type[Settings]:
    """The frozen dataclass for a set of declarations (made once per set): a `Settings` with
    one typed field per declaration, each field's metadata holding its `Setting`."""
    seen: set[str] = set()
    fields = []
    for setting in declarations:
        if setting.name in seen:
            raise ConfigError(f"PORTAL_{setting.name} is declared twice")
        seen.add(setting.name)
        field = dataclasses.field(repr=not setting.secret, metadata={"setting": setting})
        fields.append((setting.attribute, setting.type, field))
    made = dataclasses.make_dataclass("Settings", fields, bases=(Settings,), frozen=True)
    made.__module__ = __name__
    return made


def declarations(settings: Settings) -> tuple[Setting, ...]:
    """The declarations `settings` was built from, in declaration order."""
    return tuple(field.metadata["setting"] for field in dataclasses.fields(settings))


def load_settings(
    overrides: dict | None = None, environ=None, extra: Iterable[Setting] = ()
) -> Settings:
    """Read every setting of `SETTINGS` and `extra` from `overrides` (by name, without the
    PORTAL_ prefix) first, then `PORTAL_<NAME>` in the environment, then its default."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    declared = (*SETTINGS, *extra)
    values: dict = {}
    for setting in declared:
        name, default, parse = setting.name, setting.default, setting.parse
        env_name = f"PORTAL_{name}"
        if name in overrides:
            raw = overrides[name]
        elif env_name in environ and environ[env_name] != "":
            raw = environ[env_name]
        else:
            values[setting.attribute] = default
            continue
        if raw is None:
            values[setting.attribute] = None
            continue
        try:
            values[setting.attribute] = parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{env_name} is malformed: {exc}") from None
    return settings_class(declared)(**values)


def secret_names(settings: Settings | None = None) -> tuple[str, ...]:
    """The names of the settings whose values are secrets (of `settings`' declarations, or of
    `SETTINGS`)."""
    declared = SETTINGS if settings is None else declarations(settings)
    return tuple(setting.name for setting in declared if setting.secret)


def validate(settings: Settings, *, testing: bool) -> None:
    """Cross-setting rules; raises ConfigError naming the variable."""
    sandbox = settings.sandbox
    if not settings.secret_key and not (sandbox or testing):
        raise ConfigError("PORTAL_SECRET_KEY is required (set a long random value)")
    key = settings.stripe_secret_key or ""
    if sandbox and (key.startswith("sk_live_") or key.startswith("rk_live_")):
        raise ConfigError(
            "PORTAL_STRIPE_SECRET_KEY is a live key, and PORTAL_SANDBOX=1 refuses live keys"
        )
    if not sandbox and not testing:
        if not key:
            raise ConfigError("PORTAL_STRIPE_SECRET_KEY is required")
        if not settings.stripe_webhook_secret:
            raise ConfigError("PORTAL_STRIPE_WEBHOOK_SECRET is required")
    if settings.tax_mode == "fixed" and not settings.tax_rates:
        raise ConfigError(
            "PORTAL_TAX_RATES is required when PORTAL_TAX_MODE=fixed (e.g. GB:20,DE:19)"
        )
    if settings.alert_webhook_url:
        from portal.outbound import allow_loopback, check_destination
        from portal.urls import UnsafeUrl

        try:
            check_destination(
                settings.alert_webhook_url,
                loopback_ok=allow_loopback(settings),
                resolve_host=False,  # start-up does not wait on DNS; each alert resolves it
            )
        except UnsafeUrl as exc:
            raise ConfigError(f"PORTAL_ALERT_WEBHOOK_URL is refused: {exc}") from None
    public = urlsplit(settings.public_url)
    if (
        not sandbox
        and not testing
        and public.scheme != "https"
        and public.hostname
        not in {
            "127.0.0.1",
            "localhost",
        }
    ):
        raise ConfigError("PORTAL_PUBLIC_URL must be https outside a local run")
