"""One list of hostile URLs, fed to every input of the portal that takes a URL: the merchant API's
success and cancel URLs, OpenLearning's `redirect_url` claim, the redirect allow-list every
platform's redirect goes through (Skilljar's fulfil answer, Cleeng, a merchant's cancel URL, the
status page's link), PORTAL_CLEENG_RETURN_URL, a brand's links, a merchant webhook at
registration (code and `create-api-key --webhook-url`) and at send time, and the alert webhook.
Every input must refuse every URL. Names resolve through `fake_dns`: nothing leaves the machine.

Also: `portal.urls.check_url` itself (what it accepts, what it normalises), and the masking of
credentials on the settings page, walked over every setting."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import idna
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DataError

from portal import ConfigError, outbound
from portal.admin.audit import Actor
from portal.api import webhooks_out
from portal.branding.brands import DEFAULT_COLOURS, BrandError, BrandInput
from portal.branding.operations import save_brand
from portal.config import declarations, load_settings
from portal.db import db
from portal.models import ApiKey, OrderState, WebhookDelivery, WebhookEndpoint
from portal.platforms import registry
from portal.urls import UnsafeUrl, check_url, mask_credentials
from tests.admin_support import make_order
from tests.api_support import ApiClient, make_key, session_body
from tests.test_openlearning import OL_SETTINGS, claims, join
from tests.test_openlearning import sign as sign_token

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

ALLOWED = "shop.example.com"  # allow-listed everywhere below: each URL is dressed up as it

HOSTILE_URLS = [
    # Backslashes: Python's urlsplit sees the allowed host, a browser sees evil.example.
    "https://evil.example\\@shop.example.com/ok",
    "http://evil.example\\@shop.example.com/ok",
    "https://shop.example.com\\@evil.example/ok",
    "https:\\\\evil.example/shop.example.com",
    "https://shop.example.com/\\evil.example",
    "https://evil.example%5C@shop.example.com/ok",
    # User information.
    "https://user:pass@shop.example.com/ok",
    "https://shop.example.com@evil.example/ok",
    "https://shop.example.com:443@evil.example/ok",
    "https://@shop.example.com/ok",
    "https://evil.example%40shop.example.com/ok",
    # Control characters, which the WHATWG parser strips or trims.
    "https://shop.example.com/ok\n",
    "https://shop.exam\tple.com/ok",
    "https://evil.example\t@shop.example.com/ok",
    " https://shop.example.com/ok",
    "\x00https://shop.example.com/ok",
    "https://shop.example.com/ok\x7f",
    "https://evil.example\r\n.shop.example.com/ok",
    "https://shop.example.com/\x1b[2J",
    # IDN look-alikes and Unicode dots/digits (a browser maps some of them to ASCII).
    "https://shop.exаmple.com/ok",  # Cyrillic а
    "https://ѕhop.example.com/ok",  # Cyrillic ѕ
    "https://ｓhop.example.com/ok",  # full-width s
    "https://shop.example.com。evil.example/ok",  # ideographic full stop
    "https://shop.example.com\u200b/ok",  # zero-width space
    "https://xn--a.example.com/ok",  # not valid punycode
    # Mixed-case and other schemes, and the slash forms a browser "fixes".
    "JaVaScRiPt:alert(document.domain)//https://shop.example.com/",
    "hTtP://shop.example.com/ok",
    "HTTPS:shop.example.com/ok",
    "hTTpS:/shop.example.com/ok",
    "HTTPS:///shop.example.com/ok",
    "DaTa:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "FILE:///etc/passwd",
    "Gopher://shop.example.com/ok",
    "//shop.example.com/ok",
    "/ok",
    # Markup in a URL.
    'https://shop.example.com/"><script>alert(1)</script>',
    # Private, loopback, metadata and other internal addresses, in every spelling.
    "https://169.254.169.254/latest/meta-data/",
    "https://[fd00:ec2::254]/latest/meta-data/",
    "https://100.100.100.200/latest/meta-data/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://10.0.0.5/hook",
    "https://172.16.0.1/hook",
    "https://192.168.1.1/hook",
    "https://127.0.0.1/hook",
    "https://127.0.0.1:8443/hook",
    "https://[::1]/hook",
    "https://localhost/hook",
    "https://0.0.0.0/hook",
    "https://[::]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:a9fe:a9fe]/hook",
    "https://[64:ff9b::a9fe:a9fe]/hook",
    "https://2130706433/hook",
    "https://0x7f.1/hook",
    "https://0177.0.0.1/hook",
    "https://127.1/hook",
    "https://224.0.0.1/hook",
    "https://intranet.example.com/hook",
    "https://rebind.example.com/hook",
]
IDS = [repr(url)[1:-1][:60] for url in HOSTILE_URLS]

# Names that resolve to internal addresses (the DNS side of the same attacks).
INTERNAL_NAMES = {
    "metadata.google.internal": ["169.254.169.254"],
    "intranet.example.com": ["10.20.30.40"],
    "rebind.example.com": ["93.184.215.14", "127.0.0.1"],  # one public, one not
}


@pytest.fixture
def internal_dns(fake_dns):
    fake_dns.update(INTERNAL_NAMES)
    return fake_dns


# --- each input, as a function that says whether it refused the URL -------------------------------


def api_field(field):
    def feed(make_app, url):
        app = make_app()
        key = make_key(allowed_hosts=[ALLOWED])
        response = ApiClient(app.test_client(), key.secret).post(
            "/checkout-sessions", session_body(**{field: url})
        )
        assert response.status_code != 500, response.text
        if response.status_code != 400:
            return False
        error = response.json["error"]
        # A NUL is refused for the whole body, before any field is read.
        return error["param"] == field or (error["code"] == "invalid_json" and "\x00" in url)

    return feed


def openlearning_redirect(make_app, url):
    app = make_app(**{**OL_SETTINGS, "REDIRECT_HOSTS": ALLOWED})
    response = join(app.test_client(), sign_token(claims(redirect_url=url)))
    assert response.status_code != 500, response.text
    return response.status_code == 400


def redirect_allow_list(make_app, url):
    """Skilljar's fulfil `redirect_url`, Cleeng's return, a merchant's cancel URL and the status
    page's link all go through `Services.allowed_redirect`; the status page must not link."""
    app = make_app(REDIRECT_HOSTS=ALLOWED)
    services = app.extensions["portal"]
    try:
        order = make_order(state=OrderState.FULFILLED, redirect_url=url)
    except DataError:  # PostgreSQL stores no NUL: such a URL cannot be waiting in a row
        return services.allowed_redirect(url) is None
    page = app.test_client().get(f"/orders/{order.reference}/status")
    assert page.status_code in {200, 303}
    followed = page.status_code == 303 or "Continue to your course" in page.text
    return services.allowed_redirect(url) is None and not followed


def cleeng_return_url(make_app, url):
    try:
        make_app(
            REDIRECT_HOSTS=ALLOWED,
            CLEENG_PUBLISHER_TOKEN="cleeng-token",
            CLEENG_RETURN_URL=url,
        )
    except ConfigError:
        return True
    return False


def brand_link(make_app, url):
    make_app()
    try:
        save_brand(
            Actor(None, "marketer@example.com"),
            BrandInput(name="Probe", terms_url=url, **DEFAULT_COLOURS),
        )
    except BrandError as exc:
        return "terms_url" in exc.problems
    return False


def webhook_registration(make_app, url):
    make_app()
    try:
        make_key(webhook_url=url)
    except ValueError:
        return True
    return False


def webhook_command(make_app, url):
    app = make_app()
    result = app.test_cli_runner().invoke(
        args=["portal", "create-api-key", "Probe", "--webhook-url", url]
    )
    with db.reader() as session:
        stored = session.scalars(select(ApiKey)).all()
    return result.exit_code != 0 and not stored


def webhook_delivery(make_app, url):
    """An endpoint stored before the portal checked URLs (or whose DNS changed since): the
    delivery is refused when it is sent, and nothing connects anywhere."""
    app = make_app()
    made = make_key(webhook_url="https://hooks.example.com/portal")
    try:
        with db.transaction() as session:
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == made.endpoint.id)
                .values(url=url)
            )
    except DataError:  # PostgreSQL stores no NUL: such an endpoint cannot exist
        return True
    order = make_order(state=OrderState.PAID, platform="merchant", merchant_key_id=made.key.id)
    settings = app.extensions["portal"].settings
    with db.transaction() as session:
        event = webhooks_out.emit(session, settings, order, "order.paid")
    job = SimpleNamespace(payload={"event_id": event, "endpoint_id": made.endpoint.id})
    try:
        webhooks_out.run_delivery(app.extensions["portal"], job)
    except webhooks_out.UpstreamError as exc:
        refused = not exc.transient
    else:
        refused = False
    with db.reader() as session:
        row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == event))
    return refused and row.state != "delivered" and row.last_status is None


def alert_webhook(make_app, url):
    """Refused at start-up, or (a name whose addresses are only known when resolved) when an
    alert is sent."""
    try:
        app = make_app(ALERT_WEBHOOK_URL=url)
    except ConfigError:
        return True
    try:
        outbound.post(app.extensions["portal"].settings, url, json={"text": "probe"}, timeout=1)
    except outbound.BlockedDestination:
        return True
    return False


INPUTS = {
    "api success_url": api_field("success_url"),
    "api cancel_url": api_field("cancel_url"),
    "openlearning redirect_url": openlearning_redirect,
    "platform redirect allow-list": redirect_allow_list,
    "PORTAL_CLEENG_RETURN_URL": cleeng_return_url,
    "brand link": brand_link,
    "webhook registration": webhook_registration,
    "create-api-key --webhook-url": webhook_command,
    "webhook at send time": webhook_delivery,
    "PORTAL_ALERT_WEBHOOK_URL": alert_webhook,
}


@pytest.mark.parametrize("url", HOSTILE_URLS, ids=IDS)
@pytest.mark.parametrize("entry", list(INPUTS))
def test_every_url_input_refuses_every_hostile_url(make_app, internal_dns, entry, url):
    assert INPUTS[entry](make_app, url), f"{entry} accepted {url!r}"


@pytest.mark.parametrize("entry", list(INPUTS))
def test_every_url_input_accepts_a_plain_url_so_the_refusals_mean_something(
    make_app, internal_dns, mocked, entry
):
    url = f"https://{ALLOWED}/ok?order=1#top"
    if entry == "webhook at send time":
        mocked.post(url, body="ok")
        assert not INPUTS[entry](make_app, url)
        return
    if entry == "PORTAL_ALERT_WEBHOOK_URL":
        mocked.post(url, json={"ok": True})
    assert not INPUTS[entry](make_app, url), f"{entry} refused a plain URL"


# --- the check itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://shop.example.com/ok", "https://shop.example.com/ok"),
        ("HTTPS://Shop.Example.COM/Path?Q=1", "https://shop.example.com/Path?Q=1"),
        ("https://shop.example.com:8443", "https://shop.example.com:8443"),
        ("https://xn--bcher-kva.example/", "https://xn--bcher-kva.example/"),  # bücher
        ("https://93.184.215.14/x", "https://93.184.215.14/x"),
        ("https://[2606:2800:0220:0001::]/x", "https://[2606:2800:220:1::]/x"),
        ("https://shop.example.com/a%20b?c=%2F#frag", "https://shop.example.com/a%20b?c=%2F#frag"),
    ],
)
def test_check_url_accepts_plain_urls_and_lowercases_scheme_and_host(given, expected):
    assert check_url(given).url == expected


MALFORMED = HOSTILE_URLS[: HOSTILE_URLS.index("https://169.254.169.254/latest/meta-data/")]


@pytest.mark.parametrize("url", MALFORMED, ids=IDS[: len(MALFORMED)])
def test_check_url_refuses_each_malformed_url_with_a_reason(url):
    with pytest.raises(UnsafeUrl) as refused:
        check_url(url, allow_http="loopback")
    assert str(refused.value)


def test_plain_http_is_only_for_loopback_when_asked():
    assert check_url("http://127.0.0.1:5000/x", allow_http="loopback").is_loopback
    assert check_url("http://localhost:5000/x", allow_http="loopback").host == "localhost"
    for url in ("http://shop.example.com/", "http://10.0.0.1/"):
        with pytest.raises(UnsafeUrl, match="https"):
            check_url(url, allow_http="loopback")
    with pytest.raises(UnsafeUrl, match="https"):
        check_url("http://127.0.0.1:5000/x")


def test_a_punycode_look_alike_never_matches_the_allow_listed_name(make_app):
    services = make_app(REDIRECT_HOSTS=ALLOWED).extensions["portal"]
    ascii_form = idna.encode("shоp.example.com").decode()  # a Cyrillic о
    look_alike = f"https://{ascii_form}/ok"
    assert ascii_form.startswith("xn--")
    assert check_url(look_alike).host == ascii_form
    with pytest.raises(UnsafeUrl, match="punycode"):
        check_url("https://shоp.example.com/ok")  # the Unicode form itself
    assert services.allowed_redirect(look_alike) is None
    assert services.allowed_redirect(f"https://{ALLOWED}/ok") == f"https://{ALLOWED}/ok"


# --- secrets on the settings page -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("smtp://mailer:s3cret@mail.example.com:587", "smtp://mailer:***@mail.example.com:587"),
        ("redis://:s3cret@redis.example.com:6379/0", "redis://:***@redis.example.com:6379/0"),
        ("postgresql://u:p@ss@db.example.com/x", "postgresql://u:***@db.example.com/x"),
        ("https://tok_abc@hooks.example.com/x", "https://***@hooks.example.com/x"),
        (
            "https://a.example/x?token=t1&page=2&api_key=k2",
            "https://a.example/x?token=***&page=2&api_key=***",
        ),
        ("https://stripe.test", "https://stripe.test"),
    ],
)
def test_mask_credentials(text, shown):
    assert mask_credentials(text) == shown


def _secret_bearing_value(name: str, parse, number: int):
    """A value for setting `name` that carries a secret, in the first shape its parser takes
    (None when the setting holds no text at all: numbers, flags, choices)."""
    secret = f"Secret{number:03d}x"
    candidates = [
        f"https://user{number}:{secret}@host{number}.example.com/p?token={secret}q",
        f"smtps://user{number}:{secret}@mail{number}.example.com:465",
        f"redis://:{secret}@redis{number}.example.com:6379/0",
        f"postgresql://user{number}:{secret}@db{number}.example.com/portal",
        f"https://{secret}@host{number}.example.com",
        f"https://host{number}.example.com/p?token={secret}",
    ]
    if any(word in name for word in ("SECRET", "KEY", "TOKEN", "PASSWORD")):
        candidates.append(secret)
    for raw in candidates:
        try:
            every = registry.settings()  # the platforms' settings beside the core's
            return secret, getattr(
                load_settings({name: raw}, environ={}, extra=every), name.lower()
            )
        except ConfigError:
            continue
    return None, None


CAN_CARRY_A_SECRET = re.compile(r"(URL|BASE|ISSUER|ORIGINS)$|SECRET|KEY|TOKEN|PASSWORD")


def test_the_settings_page_never_shows_a_secret_in_any_setting(app, console):
    """Every setting that can hold text is given a value with a password or token in it (a URL's
    user information, a secret query parameter, or the secret itself for the named secrets);
    none of those secrets may appear on /admin/settings."""
    settings = app.config["PORTAL"]
    walked, values = {}, {}
    for number, setting in enumerate(declarations(settings)):
        name, parse = setting.name, setting.parse
        if not CAN_CARRY_A_SECRET.search(name):
            continue  # numbers, flags, choices, names and texts shown to learners
        secret, value = _secret_bearing_value(name, parse, number)
        if secret is not None:
            values[setting.attribute] = value
            walked[name] = secret
    app.config["PORTAL"] = dataclasses.replace(settings, **values)
    must_walk = {
        "SMTP_URL",
        "RATELIMIT_STORAGE_URL",
        "DATABASE_URL",
        "SANDBOX_DATABASE_URL",
        "ALERT_WEBHOOK_URL",
        "PUBLIC_URL",
        "STRIPE_API_BASE",
        "OPENLEARNING_JWKS_URL",
        "OIDC_ISSUER",
        "CLEENG_RETURN_URL",
        "SECRET_KEY",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "OIDC_CLIENT_SECRET",
        "METRICS_TOKEN",
        "CLEENG_PUBLISHER_TOKEN",
    }
    assert must_walk <= set(walked), must_walk - set(walked)
    page = console("admin").get("/admin/settings").text
    for name, secret in walked.items():
        assert f"PORTAL_{name}" in page
        assert secret not in page, f"PORTAL_{name} shows its secret"
    assert "smtps://user" in page  # URL settings are still shown, their passwords masked


def test_a_brand_link_to_a_name_that_does_not_resolve_yet_can_be_saved(make_app, internal_dns):
    """A learner's browser follows brand links: a name that resolves internally is refused, but
    one that does not resolve (a DNS hiccup, a site not yet live) does not block the save."""
    make_app()
    internal_dns["soon.example.com"] = []
    brand = save_brand(
        Actor(None, "marketer@example.com"),
        BrandInput(name="Soon", terms_url="https://soon.example.com/terms", **DEFAULT_COLOURS),
    )
    assert brand.terms_url == "https://soon.example.com/terms"
    with pytest.raises(BrandError):
        save_brand(
            Actor(None, "marketer@example.com"),
            BrandInput(name="In", terms_url="https://intranet.example.com/t", **DEFAULT_COLOURS),
        )
