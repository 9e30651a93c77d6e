"""Pay-link and receipt emails are rendered like the learner pages: in the sandboxed learner
environment, by the worker (no request, no app context), with the order's brand (name, logo,
colours, support address, legal links, footer copy) and language, and with a marketer's
published override of the email templates, falling back to the default when one breaks: the
email is sent either way. The console previews every email sample."""

from __future__ import annotations

import re

import pytest
from flask import url_for
from jinja2.sandbox import SecurityError
from sqlalchemy import select

from portal import mail
from portal.branding import environment, overrides, samples
from portal.branding.emails import EMAIL_PATHS, public_url_for
from portal.branding.operations import assign, save_brand
from portal.db import db
from portal.models import Job, JobState, OrderEvent, OrderState, TemplateOverride
from tests.admin_support import make_order
from tests.api_support import make_key, queued, run_queued
from tests.test_api_email import smtp_server  # noqa: F401 - the in-process SMTP server fixture
from tests.test_branding import ACTOR, PNG, brand_input, editor_post, publish_raw

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

ITEMS = [
    {"name": "Seat licence", "unit_amount": 4900, "quantity": 40},
    {"name": "Onboarding", "unit_amount": 25000, "quantity": 1},
]


@pytest.fixture(autouse=True)
def fresh_templates(monkeypatch):
    """Compiled overrides are cached per process by their row id, and every test's database
    numbers its rows from 1 again: start each test with empty template caches."""
    monkeypatch.setattr(environment, "_live", {})


@pytest.fixture
def app(make_app, smtp_server):  # noqa: F811 - the fixture imported above
    return make_app(SMTP_URL=smtp_server.url, BRAND_SUPPORT_EMAIL="help@settings.example")


def merchant_order(key, **fields):
    values = {
        "state": OrderState.OPEN,
        "platform": "merchant",
        "platform_ref": "chs_test_1",
        "description": "Seat licence and 1 more item",
        "sku": None,
        "quantity": 41,
        "amount_minor": 221000,
        "list_unit_minor": None,
        "promo_code": None,
        "customer_email": "buyer@example.com",
        "customer_name": "Ada Lovelace",
        "merchant_key_id": key.key.id,
        "capture_method": "automatic",
        "platform_data": {"items": ITEMS, "reference": "SO-1001", "mode": "link"},
    }
    values.update(fields)
    return make_order(**values)


def send(app, smtp_server, order, template="pay_link"):  # noqa: F811
    """Queue the email as the API does, run the worker's job, return the message."""
    with db.transaction() as session:
        mail.queue(session, template, order, to=order.customer_email)
    assert run_queued(app, "mail") == 1
    assert smtp_server.arrived.wait(5)
    smtp_server.arrived.clear()
    (_recipients, message) = smtp_server.messages.pop()
    return message


def parts(message) -> tuple[str, str]:
    return (
        message.get_body(("plain",)).get_content(),
        message.get_body(("html",)).get_content(),
    )


def test_the_pay_link_email_wears_the_brand_of_the_orders_source(app, smtp_server):  # noqa: F811
    key = make_key(brand_name="Key Brand Name")
    save_brand(ACTOR, brand_input(name="Default Co"))
    brand = save_brand(
        ACTOR,
        brand_input(
            name="Acme & Sons Supplies",
            primary="#0b6e4f",
            text="#102a43",
            accent="#0b6e4f",
            support_email="help@acme.example",
            terms_url="https://acme.example/terms",
            privacy_url="https://acme.example/privacy",
            copy_blocks={"footer_note": "Acme & Sons, 1 Market Street, Leeds"},
            logo=PNG,
        ),
    )
    assign(ACTOR, "merchant", str(key.key.id), brand.id)
    order = merchant_order(key)
    message = send(app, smtp_server, order)
    text, html = parts(message)
    # A brand assigned to this very key wins over the key's own `--brand` name.
    assert message["Subject"] == "Acme & Sons Supplies: your order is ready to pay"
    assert "Acme & Sons Supplies" in message["From"]
    logo = f"http://portal.test/brand/{brand.id}/logo?v={brand.version}"
    assert f'<img src="{logo}" alt="Acme &amp; Sons Supplies"' in html
    assert "border-top:4px solid #0b6e4f" in html  # the primary colour
    assert "background:#0b6e4f" in html  # the pay button
    assert "color:#102a43" in html  # the brand's text colour
    assert 'href="mailto:help@acme.example"' in html
    assert 'href="https://acme.example/terms"' in html
    assert 'href="https://acme.example/privacy"' in html
    assert "Acme &amp; Sons, 1 Market Street, Leeds" in html
    assert "Acme & Sons Supplies has prepared your order SO-1001." in text
    # The text part is plain text: no HTML escapes in it.
    assert "&amp;" not in text
    assert "Acme & Sons, 1 Market Street, Leeds" in text
    assert "Questions? Write to help@acme.example." in text
    assert "Terms: https://acme.example/terms" in text
    assert "40 × Seat licence: $1,960.00" in text
    assert "Total: $2,210.00" in text
    link = f"http://portal.test/orders/{order.reference}"
    assert link in text
    assert f'href="{link}"' in html
    assert "Review and pay $2,210.00" in html
    assert '<html lang="en">' in html


def test_without_a_brand_of_its_own_the_keys_name_signs_the_email(app, smtp_server):  # noqa: F811
    save_brand(ACTOR, brand_input(name="Default Co", primary="#7a1fa2"))
    key = make_key(brand_name="Key Brand Name")
    message = send(app, smtp_server, merchant_order(key))
    text, html = parts(message)
    assert message["Subject"] == "Key Brand Name: your order is ready to pay"
    assert "Key Brand Name has prepared your order" in text
    assert "border-top:4px solid #7a1fa2" in html  # the default brand's look
    assert "Default Co" not in html


def test_a_french_order_gets_a_french_email(app, smtp_server):  # noqa: F811
    key = make_key(brand_name="Acme Supplies")
    order = merchant_order(key, locale="fr_FR", capture_method="manual")
    message = send(app, smtp_server, order)
    text, html = parts(message)
    assert message["Subject"] == "Acme Supplies : votre commande est prête à être payée"
    assert '<html lang="fr">' in html
    nbsp = "\N{NO-BREAK SPACE}"
    narrow = "\N{NARROW NO-BREAK SPACE}"
    total = f"2{narrow}210,00{nbsp}$US"
    for expected in (
        "Bonjour Ada Lovelace,",
        "Acme Supplies a préparé votre commande SO-1001.",
        "Votre carte est autorisée maintenant et débitée à l’expédition de votre commande.",
        f"Total : {total}",
        "Le lien est valable 7 jours.",
        "Les paiements sont traités en toute sécurité par Stripe.",
        "Des questions ? Écrivez à help@settings.example.",
    ):
        assert expected in text, expected
    assert f"Vérifier et payer {total}" in html
    assert "Article" in html
    assert "Hello" not in text


def test_a_receipt_in_french_after_payment(app, smtp_server):  # noqa: F811
    key = make_key(brand_name="Acme Supplies")
    order = merchant_order(
        key, state=OrderState.PAID, locale="fr", amount_paid_minor=221000, tax_paid_minor=0
    )
    message = send(app, smtp_server, order, "receipt")
    text, _html = parts(message)
    assert message["Subject"] == "Acme Supplies : reçu de votre commande"
    assert "Merci : Acme Supplies a bien reçu votre paiement pour la commande SO-1001." in text
    assert "Débité : 2\N{NARROW NO-BREAK SPACE}210,00\N{NO-BREAK SPACE}$US" in text
    assert f"Référence de commande {order.reference}" in text


def test_a_published_override_of_an_email_applies(app, smtp_server, console):  # noqa: F811
    marketer = console("marketer")
    source = (
        '{% extends "default:email/pay_link.html" %}\n'
        "{% block body %}<p>Hi from {{ brand.name|upper }}</p>{{ super() }}{% endblock %}\n"
    )
    saved = editor_post(marketer, "/admin/branding/templates/email/pay_link.html", source=source)
    assert "no problems" in marketer.get(saved.headers["Location"]).text
    published = editor_post(
        marketer, "/admin/branding/templates/email/pay_link.html/publish", version="1"
    )
    assert published.status_code == 303
    key = make_key(brand_name="Acme Supplies")
    _text, html = parts(send(app, smtp_server, merchant_order(key)))
    assert "<p>Hi from ACME SUPPLIES</p>" in html
    assert "Review and pay $2,210.00" in html  # the rest of the default is kept


@pytest.mark.parametrize(
    ("name", "source"),
    [
        (
            "email/pay_link.html",
            '{% extends "default:email/pay_link.html" %}'
            "{% block body %}{{ order.no_such_field }}{% endblock %}",
        ),
        ("email/pay_link.txt", "{{ 1 / 0 }}"),
        (
            "email/_layout.html",
            '{% extends "default:email/_layout.html" %}{% block footer %}'
            "{{ url_for('admin.dashboard') }}{% endblock %}",
        ),
    ],
)
def test_a_broken_email_override_falls_back_and_the_email_still_goes(
    app,
    smtp_server,  # noqa: F811
    caplog,
    name,
    source,
):
    publish_raw(name, source)
    key = make_key(brand_name="Acme Supplies")
    order = merchant_order(key)
    with caplog.at_level("ERROR", logger="portal.branding"):
        message = send(app, smtp_server, order)
    text, html = parts(message)
    assert "Acme Supplies has prepared your order SO-1001." in text
    assert "Review and pay $2,210.00" in html
    assert "email template override failed" in caplog.text
    with db.reader() as session:
        row = session.scalar(select(TemplateOverride))
        sent = session.scalars(
            select(OrderEvent.message).where(OrderEvent.order_id == order.id)
        ).all()
    assert row.failure_count == 1
    assert row.last_failure.startswith(f"{name}, line 1")
    assert "email pay_link sent" in sent
    assert queued("mail") == []
    with db.reader() as session:
        (job,) = session.scalars(select(Job).where(Job.kind == "mail")).all()
    assert job.state == JobState.DONE


def test_email_links_match_the_apps_routes(app):
    build = public_url_for(app.config["PORTAL"])
    values = {"reference": "ord_abcdefghijkl", "brand_id": 3, "filename": "portal.css"}
    with app.test_request_context(base_url="http://portal.test/"):
        for endpoint, path in EMAIL_PATHS.items():
            wanted = {k: v for k, v in values.items() if "{" + k + "}" in path}
            assert build(endpoint, **wanted, v=2) == url_for(
                endpoint, _external=True, **wanted, v=2
            ), endpoint
    with pytest.raises(SecurityError, match="not available"):
        build("admin.dashboard")


def test_the_console_previews_every_email_sample(app, console):
    marketer = console("marketer")
    brand = save_brand(ACTOR, brand_input(name="Preview Brand", primary="#0b6e4f", logo=PNG))
    for name in ("email/pay_link.html", "email/pay_link.txt", "email/receipt.html"):
        for sample in samples.samples_for(name):
            assert sample.template == name
            for lang in ("en", "fr"):
                shown = marketer.get(
                    f"/admin/branding/templates/{name}/preview?state={sample.key}&lang={lang}"
                    f"&brand={brand.id}"
                )
                assert shown.status_code == 200, (sample.key, lang)
                policy = shown.headers["Content-Security-Policy"]
                assert "sandbox" in policy
                assert "script-src" not in policy
                assert "default-src 'none'" in policy
    html = marketer.get(
        f"/admin/branding/templates/email/pay_link.html/preview?state=email-pay-link-html"
        f"&brand={brand.id}"
    ).text
    assert "Preview Brand has prepared your order SO-1001." in html
    assert "border-top:4px solid #0b6e4f" in html
    assert f'src="/brand/{brand.id}/logo?v={brand.version}"' in html
    text = marketer.get(
        "/admin/branding/templates/email/receipt.txt/preview?state=email-receipt-txt&lang=fr"
    ).text
    assert re.search(r"<pre[^>]*>Bonjour Ada Lovelace,", text)
    # The email layout's check renders the emails only, and catches what breaks them.
    layout_keys = {s.key for s in samples.samples_for("email/_layout.html")}
    assert layout_keys == {s.key for s in samples.all_samples() if s.template.startswith("email/")}
    with app.test_request_context():
        problems = overrides.check(
            "email/_layout.html",
            '{% extends "default:email/_layout.html" %}{% block footer %}{{ colours.nope }}'
            "{% endblock %}",
        )
    assert problems
    assert all(p.where.startswith("Email") for p in problems)
    assert "email/_layout.html, line 1" in problems[0].message
