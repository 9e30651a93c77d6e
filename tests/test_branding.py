"""Brands, the marketer's template overrides and the learner pages' languages: what a marketer can
change, what they cannot reach (sandbox escapes, config, the secret key, scripts), that a broken
override never takes checkout down, and that French is complete."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from sqlalchemy import select

from portal.admin.audit import Actor
from portal.branding import brands, environment, overrides
from portal.branding.brands import DEFAULT_COLOURS, BrandError, BrandInput
from portal.branding.operations import assign, save_brand
from portal.db import db
from portal.models import OrderState, TemplateOverride
from tests.admin_support import audit_entries, csrf, make_order

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

ROOT = Path(__file__).resolve().parent.parent
ACTOR = Actor(None, "marketer@example.com")
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99"
    b"=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)


def brand_input(**fields) -> BrandInput:
    values = {"name": "Acme Academy", **DEFAULT_COLOURS}
    values.update(fields)
    return BrandInput(**values)


def publish_raw(name: str, source: str, version: int = 1) -> None:
    """A live override straight into the database, as if it had passed the checks then and
    broke later (a renamed variable, a changed default)."""
    with db.transaction() as session:
        session.add(
            TemplateOverride(
                template_name=name, version=version, source=source, author="x", published=True
            )
        )


def review(app, order, **headers):
    return app.test_client().get(f"/orders/{order.reference}", headers=headers)


# --- brands ---------------------------------------------------------------------------------


def test_contrast_ratio_matches_wcag():
    assert brands.contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert brands.contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    assert brands.on_colour("#ffeb3b") == brands.NEAR_BLACK
    assert brands.on_colour("#3b37b8") == brands.WHITE


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"text": "#999999"}, "colours"),  # grey text on a light background
        ({"primary": "#8fb3ff"}, "colours"),  # pale links on white cards
        ({"accent": "#f3f5f8"}, "colours"),  # an invisible focus ring
        ({"primary": "red"}, "primary"),
        ({"background": "#fff"}, "background"),
        ({"font_stack": "Comic Sans; } body { display:none"}, "font_stack"),
        ({"terms_url": "javascript:alert(1)"}, "terms_url"),
        ({"privacy_url": "http://example.com/privacy"}, "privacy_url"),
        ({"support_email": "not an email"}, "support_email"),
        ({"name": ""}, "name"),
        ({"logo": b"GIF89a...."}, "logo"),
        (
            {"logo": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'},
            "logo",
        ),
        ({"logo": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'}, "logo"),
        ({"logo": b'<svg><image href="https://evil.example/x.png"/></svg>'}, "logo"),
    ],
)
def test_a_brand_that_fails_a_check_is_refused(app, fields, problem):
    with pytest.raises(BrandError) as refused:
        save_brand(ACTOR, brand_input(**fields))
    assert problem in refused.value.problems


def test_brand_colours_reach_the_page_through_a_cacheable_stylesheet(app, client):
    brand = save_brand(ACTOR, brand_input(primary="#0b6e4f", text="#102a43", accent="#0b6e4f"))
    order = make_order(state=OrderState.OPEN)
    page = review(app, order).text
    theme_url = f"/brand/{brand.id}/theme.css?v={brand.version}"
    assert f'<link rel="stylesheet" href="{theme_url}">' in page
    assert "style=" not in page  # nothing inline: style-src 'self' holds
    css = client.get(theme_url)
    assert css.mimetype == "text/css"
    assert "--brand: #0b6e4f;" in css.text
    assert "--ink: #102a43;" in css.text
    assert "immutable" in css.headers["Cache-Control"]
    again = client.get(theme_url, headers={"If-None-Match": css.headers["ETag"]})
    assert again.status_code == 304
    # Saving bumps the version: the page links a new URL, so no cache serves the old colours.
    save_brand(ACTOR, brand_input(primary="#7a1fa2"), brand.id)
    assert f"/brand/{brand.id}/theme.css?v={brand.version + 1}" in review(app, order).text


def test_the_order_gets_its_sources_brand_then_the_platforms_then_the_default(app):
    default = save_brand(ACTOR, brand_input(name="Default Co"))
    academy = save_brand(ACTOR, brand_input(name="Skilljar Academy"))
    institution = save_brand(ACTOR, brand_input(name="Uni of Example"))
    assign(ACTOR, "skilljar", "*", academy.id)
    assign(ACTOR, "openlearning", "uni-example", institution.id)
    skilljar_order = make_order(state=OrderState.OPEN)
    ol_order = make_order(
        state=OrderState.OPEN,
        platform="openlearning",
        platform_ref="jti-1",
        platform_data={"institution": "uni-example"},
    )
    other_ol = make_order(
        state=OrderState.OPEN,
        platform="openlearning",
        platform_ref="jti-2",
        platform_data={"institution": "elsewhere"},
    )
    assert "Skilljar Academy" in review(app, skilljar_order).text
    assert "Uni of Example" in review(app, ol_order).text
    assert "Default Co" in review(app, other_ol).text
    assert default.is_default
    assert [e.target for e in audit_entries("brand.assign")] == [
        "skilljar:*",
        "openlearning:uni-example",
    ]


def test_without_any_brand_the_settings_name_and_email_are_used(make_app):
    app = make_app(BRAND_NAME="Settings Academy", BRAND_SUPPORT_EMAIL="help@settings.test")
    order = make_order(state=OrderState.OPEN)
    page = review(app, order).text
    assert "Settings Academy" in page
    assert "help@settings.test" in page
    assert "/brand/" not in page


def test_script_in_brand_fields_is_escaped_everywhere(app, client):
    hostile_copy = {
        "review_intro": "<script>alert(1)</script><img src=x onerror=alert(2)>",
        "footer_note": '"><svg onload=alert(3)>',
    }
    # Copy is plain text: tags are refused when saved (issue 23)...
    with pytest.raises(BrandError) as refused:
        save_brand(ACTOR, brand_input(copy_blocks=hostile_copy))
    assert set(refused.value.problems) == {"copy_review_intro", "copy_footer_note"}
    brand = save_brand(ACTOR, brand_input(name='<script>alert("name")</script>'))
    # ...and escaped all the same where a row from before that rule has them.
    from portal.models import Brand

    with db.transaction() as session:
        session.get(Brand, brand.id).copy_blocks = hostile_copy
    order = make_order(state=OrderState.OPEN)
    page = review(app, order).text
    assert "<script>" not in page
    assert "<img src=x" not in page
    assert "<svg onload" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;" in page
    # An https address with markup in it is refused outright.
    with pytest.raises(BrandError):
        save_brand(ACTOR, brand_input(terms_url='https://example.com/t"><script>x</script>'))


def test_an_uploaded_logo_is_served_with_a_strict_type_and_a_sandbox(app, client):
    brand = save_brand(ACTOR, brand_input(logo=PNG))
    assert brand.logo_type == "image/png"
    order = make_order(state=OrderState.OPEN)
    page = review(app, order).text
    assert f'src="/brand/{brand.id}/logo?v={brand.version}" alt="Acme Academy"' in page
    logo = client.get(f"/brand/{brand.id}/logo?v={brand.version}")
    assert logo.data == PNG
    assert logo.headers["Content-Type"] == "image/png"
    assert logo.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in logo.headers["Content-Security-Policy"]
    svg = (
        b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10">'
        b'<rect width="10" height="10"/></svg>'
    )
    brand = save_brand(ACTOR, brand_input(logo=svg), brand.id)
    assert client.get(f"/brand/{brand.id}/logo").headers["Content-Type"] == "image/svg+xml"


# --- the sandbox: what an override cannot do ------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ config }}",
    "{{ config.SECRET_KEY }}",
    "{{ self._TemplateReference__context }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ request.environ }}",
    "{{ url_for.__globals__ }}",
    "{{ fmt.__globals__ }}",
    "{{ csrf_token.__globals__ }}",
    "{{ _.__globals__ }}",
    "{{ brand._sa_instance_state }}",
    "{{ order.__class__ }}",
    "{{ order._sa_instance_state }}",
    "{{ range.__self__ }}",
    "{{ url_for('admin.settings_page') }}",
    "{% include '/etc/passwd' %}",
    "{% include '../portal/config.py' %}",
    "{% include 'admin/settings.html' %}",
    "{% extends 'sandbox/base.html' %}",
    "{{ brand.name|safe }}",
    "{{ ''|attr('__class__') }}",
    "{{ order|tojson }}",
    "{% set x = brand.update({'name': 'pwned'}) %}",
    "{{ brand.get.__self__ }}",
    "{{ 'a'.format.__self__ }}",
    "{{ '{0.__class__}'.format(order) }}",
    "<script>alert(1)</script>",
    '<a href="javascript:alert(1)">x</a>',
    '<img src=x onerror="alert(1)">',
    "{% for x in range(100000000) %}{% endfor %}",
]


@pytest.mark.parametrize("payload", ESCAPES)
def test_sandbox_escape_payloads_fail_the_check_and_never_publish(console, payload):
    name = "review.html"
    source = (
        '{% extends "default:review.html" %}{% block heading %}<h1>'
        + payload
        + "</h1>{% endblock %}"
    )
    with console("marketer").application.test_request_context():
        problems = overrides.check(name, source)
        assert problems, payload
        row = overrides.save_draft(ACTOR, name, source, None)
        with pytest.raises(overrides.OverrideError):
            overrides.publish(ACTOR, name, row.version)
    with db.reader() as session:
        assert session.scalar(select(TemplateOverride.published)) is False


@pytest.mark.parametrize("payload", ESCAPES)
def test_a_live_override_with_an_escape_payload_falls_back_and_leaks_nothing(app, payload):
    publish_raw(
        "review.html",
        '{% extends "default:review.html" %}{% block heading %}<h1>'
        + payload
        + "</h1>{% endblock %}",
    )
    order = make_order(state=OrderState.OPEN)
    response = review(app, order)
    page = response.text
    assert response.status_code == 200
    assert "Review your order" in page
    assert "Pay $78.40" in page
    assert app.config["SECRET_KEY"] not in page
    assert "sk_test_unit" not in page
    assert "subclasses" not in page
    assert "<class" not in page
    assert "<script>alert" not in page
    assert "onerror" not in page
    assert "javascript:" not in page


def test_the_secret_key_is_unreachable_from_every_template_global(app):
    """Walk every name a learner template can see: none is or holds the app, its config or
    a secret."""
    order = make_order(state=OrderState.OPEN)
    with app.test_request_context(f"/orders/{order.reference}"):
        from portal.branding.render import order_data, page_context

        context = page_context(
            brand=brands.brand_for(order, app.config["PORTAL"], lambda *a, **k: "/x"),
            locale="en",
            order=order_data(order),
            context={},
        )
        env = environment.live_environment("en")
        seen = [*context.values(), *env.globals.values()]
        for value in seen:
            assert value is not app
            assert value is not app.config
            assert "test-secret-key" not in repr(value)
            assert "sk_test_unit" not in repr(value)


# --- the override workflow ------------------------------------------------------------------

HEADLINE = (
    '{% extends "default:review.html" %}\n'
    '{% block heading %}<h1 class="headline">{{ _("Review your order") }}: '
    "{{ brand.name|upper }}</h1>{% endblock %}\n"
)


def editor_post(client, path, **data):
    token = csrf(client.get("/admin/branding/templates/review.html").text)
    return client.post(path, data={"csrf_token": token, **data})


def test_a_marketer_edits_previews_publishes_and_rolls_back(app, console):
    marketer = console("marketer")
    save_brand(ACTOR, brand_input(name="Acme Academy"))
    order = make_order(state=OrderState.OPEN)
    editor = marketer.get("/admin/branding/templates/review.html")
    assert "{% extends &#34;default:review.html&#34; %}" in editor.text
    saved = editor_post(
        marketer, "/admin/branding/templates/review.html", source=HEADLINE, note="headline"
    )
    assert saved.status_code == 303
    assert saved.headers["Location"].endswith("version=1")
    page = marketer.get(saved.headers["Location"]).text
    assert "no problems" in page
    # Previews of every sample state render the draft; the live page does not have it yet.
    for sample in overrides.samples.samples_for("review.html"):
        shown = marketer.get(
            f"/admin/branding/templates/review.html/preview?version=1&state={sample.key}"
        )
        assert shown.status_code == 200, sample.key
        assert 'class="headline"' in shown.text
        assert "ACME ACADEMY" in shown.text
    kwd = marketer.get("/admin/branding/templates/review.html/preview?version=1&state=kwd").text
    assert "KWD24.750" in kwd
    jpy = marketer.get("/admin/branding/templates/review.html/preview?version=1&state=jpy").text
    assert "¥12,800" in jpy
    assert 'class="headline"' not in review(app, order).text
    published = editor_post(marketer, "/admin/branding/templates/review.html/publish", version="1")
    assert published.status_code == 303
    assert '<h1 class="headline">Review your order: ACME ACADEMY</h1>' in review(app, order).text
    # A second version, published, then one click back to the first.
    editor_post(
        marketer,
        "/admin/branding/templates/review.html",
        source=HEADLINE.replace("headline", "headline-two"),
    )
    editor_post(marketer, "/admin/branding/templates/review.html/publish", version="2")
    assert "headline-two" in review(app, order).text
    page = marketer.get("/admin/branding/templates/review.html?version=2").text
    assert "-{% block heading %}&lt;h1 class=&#34;headline&#34;&gt;" in page.replace("\n", "")
    editor_post(marketer, "/admin/branding/templates/review.html/rollback", version="1")
    live = review(app, order).text
    assert 'class="headline"' in live
    assert "headline-two" not in live
    history = overrides.history("review.html")
    assert [(h.version, h.published, h.note) for h in history] == [
        (3, True, "Rollback to version 1"),
        (2, False, None),
        (1, False, "headline"),
    ]
    assert all(h.author == "marketer@example.com" for h in history)
    editor_post(marketer, "/admin/branding/templates/review.html/default")
    assert 'class="headline"' not in review(app, order).text
    actions = [e.action for e in audit_entries() if e.action.startswith("template.")]
    assert actions == [
        "template.save",
        "template.publish",
        "template.save",
        "template.publish",
        "template.rollback",
        "template.default",
    ]


def test_syntax_and_undefined_errors_are_shown_with_line_numbers_and_block_publishing(console):
    marketer = console("marketer")
    broken = (
        '{% extends "default:review.html" %}\n\n'
        "{% block heading %}<h1>{{ order.titel }}</h1>{% endblock %}\n"
    )
    saved = editor_post(marketer, "/admin/branding/templates/review.html", source=broken)
    page = marketer.get(saved.headers["Location"]).text
    assert "review.html, line 3" in page
    assert "titel" in page
    refused = editor_post(marketer, "/admin/branding/templates/review.html/publish", version="1")
    assert "cannot be published" in marketer.get(refused.headers["Location"]).text
    syntax = (
        '{% extends "default:review.html" %}\n{% block heading %}\n'
        "<h1>{{ order.description </h1>\n{% endblock %}"
    )
    saved = editor_post(marketer, "/admin/branding/templates/review.html", source=syntax)
    page = marketer.get(saved.headers["Location"]).text
    assert re.search(r"review\.html, line [34]: ", page)
    preview = marketer.get("/admin/branding/templates/review.html/preview?version=1&state=open")
    assert preview.status_code == 422
    assert "line 3" in preview.text
    with db.reader() as session:
        assert session.scalar(select(TemplateOverride).where(TemplateOverride.published)) is None
    assert audit_entries("template.publish")[0].outcome == "refused"


def test_a_broken_live_override_falls_back_and_the_console_shows_it(app, console, caplog):
    publish_raw(
        "status.html",
        '{% extends "default:status.html" %}'
        "{% block content %}{{ order.no_such_field }}{% endblock %}",
    )
    order = make_order(state=OrderState.CANCELLED)
    with caplog.at_level("ERROR", logger="portal.branding"):
        response = app.test_client().get(f"/orders/{order.reference}/status")
    assert response.status_code == 200
    assert "Order cancelled" in response.text
    assert "template override failed" in caplog.text
    assert "no_such_field" in caplog.text
    with db.reader() as session:
        row = session.scalar(select(TemplateOverride))
    assert row.failure_count == 1
    assert "status.html, line 1" in row.last_failure
    marketer = console("marketer")
    assert "1 failed render(s)" in marketer.get("/admin/branding").text
    assert "failed 1 time(s)" in marketer.get("/admin/branding/templates/status.html").text


def test_a_broken_override_of_the_shared_frame_still_leaves_error_pages_up(app):
    publish_raw(
        "base.html", "{% extends 'default:base.html' %}{% block footer %}{{ 1/0 }}{% endblock %}"
    )
    response = app.test_client().get("/no-such-page")
    assert response.status_code == 404
    assert "Page not found" in response.text


def test_the_database_being_down_still_renders_the_default_error_page(app, monkeypatch):
    def down(*args, **kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(db, "reader", down)
    response = app.test_client().get("/no-such-page")
    assert response.status_code == 404
    assert "Page not found" in response.text


def test_only_learner_templates_are_editable(console):
    marketer = console("marketer")
    for name in (
        "admin/base.html",
        "sandbox/base.html",
        "sandbox/mail_message.html",
        "../portal/config.py",
    ):
        assert marketer.get(f"/admin/branding/templates/{name}").status_code == 404
    # The Cleeng review page and the emails are learner-facing: a marketer edits them too.
    for name in ("cleeng/review.html", "email/pay_link.html", "email/receipt.txt"):
        assert marketer.get(f"/admin/branding/templates/{name}").status_code == 200, name
    assert console("operator").get("/admin/branding/templates/review.html").status_code == 403


# --- languages ------------------------------------------------------------------------------


def test_french_learners_get_french_pages_money_and_stripe_locale(app, mocked, purchase):
    from tests.test_skilljar_checkout import PURCHASE_URL

    mocked.get(PURCHASE_URL, json=purchase())
    response = app.test_client().get(
        "/skilljar/checkout?purchase_id=p1abc", headers={"Accept-Language": "fr-FR,fr;q=0.9"}
    )
    page = response.text
    assert '<html lang="fr">' in page
    assert "Vérifiez votre commande" in page
    assert "Récapitulatif de la commande" in page
    assert "Payer 78,40\u00a0$US" in page
    assert "Review your order" not in page
    from portal.stripe_gateway import checkout_locale

    with db.reader() as session:
        from portal.models import Order

        order = session.scalar(select(Order))
    assert order.locale == "fr_FR"
    assert checkout_locale(order.locale) == "fr"


def test_error_pages_follow_accept_language(client):
    page = client.get("/no-such-page", headers={"Accept-Language": "fr"}).text
    assert "Page introuvable" in page
    assert "Erreur 404" in page
    assert 'lang="fr"' in page
    page = client.get("/no-such-page", headers={"Accept-Language": "de"}).text
    assert "Page not found" in page
    assert 'lang="en"' in page


def test_the_french_catalogue_is_complete_and_the_compiled_file_is_current():
    pot_path = ROOT / "translations" / "messages.pot"
    fresh = subprocess.run(
        [
            str(Path(sys.executable).parent / "pybabel"),
            "extract",
            "-F",
            "babel.cfg",
            "-o",
            "/dev/stdout",
            "--no-location",
            "--omit-header",
            "--ignore-dirs=.*",
            "--ignore-dirs=node_modules",
            ".",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    extracted = {catalogue_key(m.id) for m in read_po(io.BytesIO(fresh)) if m.id}
    assert extracted == {
        catalogue_key(m.id) for m in read_po(io.BytesIO(pot_path.read_bytes())) if m.id
    }
    po = read_po(io.BytesIO((ROOT / "translations/fr/LC_MESSAGES/messages.po").read_bytes()))
    translated = {catalogue_key(m.id): catalogue_key(m.string) for m in po if m.id}
    assert set(translated) >= extracted
    # A plural message is translated when every one of its forms is.
    untranslated = [
        i for i in extracted if not all(translated[i] if isinstance(i, tuple) else [translated[i]])
    ]
    assert untranslated == []
    mo = read_mo(io.BytesIO((ROOT / "translations/fr/LC_MESSAGES/messages.mo").read_bytes()))
    assert {catalogue_key(m.id): catalogue_key(m.string) for m in mo if m.id} == translated


def catalogue_key(value):
    """A catalogue id or string, hashable: a plural message's forms as a tuple."""
    return tuple(value) if isinstance(value, list | tuple) else value


def test_csp_extra_origins_are_an_admin_setting(make_app):
    app = make_app(
        CSP_SCRIPT_ORIGINS="https://stats.example.com", CSP_IMG_ORIGINS="https://img.example.com"
    )
    policy = app.test_client().get("/healthz").headers["Content-Security-Policy"]
    assert "script-src 'self' https://stats.example.com;" in policy
    assert "img-src 'self' data: https://img.example.com;" in policy
    assert "style-src 'self';" in policy


@pytest.mark.parametrize(
    "value",
    ["http://stats.example.com", "https://*.example.com", "https://x.com/a.js", "'unsafe-inline'"],
)
def test_csp_origins_must_be_plain_https_origins(make_app, value):
    from portal.config import ConfigError

    with pytest.raises(ConfigError, match="PORTAL_CSP_SCRIPT_ORIGINS"):
        make_app(CSP_SCRIPT_ORIGINS=value)


def test_a_marketer_edits_a_brand_in_the_console_and_sees_contrast(console):
    marketer = console("marketer")
    page = marketer.get("/admin/branding/brands/new")
    fields = {
        "name": "Acme",
        "primary": "#cccccc",
        "text": "#16192b",
        "background": "#f3f5f9",
        "accent": "#1a5fd0",
        "font_stack": "humanist",
    }
    refused = marketer.post(
        "/admin/branding/brands/new", data={"csrf_token": csrf(page.text), **fields}
    )
    assert refused.status_code == 400
    assert "Not enough contrast" in refused.text
    assert "fails: needs 4.5:1" in refused.text
    fields["primary"] = "#0b6e4f"
    saved = marketer.post(
        "/admin/branding/brands/new", data={"csrf_token": csrf(page.text), **fields}
    )
    assert saved.status_code == 303
    assert audit_entries("brand.create")[0].actor == "marketer@example.com"
