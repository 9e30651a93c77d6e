"""The Cleeng review page is a learner page like the others: it goes through `render_learner`, so
it wears the brand assigned to Cleeng, speaks the learner's language, takes a marketer's
published override (and falls back when one breaks), and has preview samples in the console.
A paid Cleeng order's status page shows the tax included in Cleeng's price, not "Tax 0"."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal.branding import environment, overrides, samples
from portal.branding.operations import assign, save_brand
from portal.db import db
from portal.models import OrderState, TemplateOverride
from tests.admin_support import make_order
from tests.test_branding import ACTOR, brand_input, editor_post, publish_raw
from tests.test_cleeng import ORDER_ID, ORDER_URL, SETTINGS, cleeng_order, envelope

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing


@pytest.fixture
def app(make_app):
    return make_app(**SETTINGS)


@pytest.fixture(autouse=True)
def fresh_templates(monkeypatch):
    """Compiled overrides are cached per process by their row id, and every test's database
    numbers its rows from 1 again: start each test with empty template caches."""
    monkeypatch.setattr(environment, "_live", {})


def open_review(client, mocked, order=None, **headers):
    mocked.get(ORDER_URL, json=envelope(order=order or cleeng_order()))
    response = client.get(f"/cleeng/checkout?orderId={ORDER_ID}", headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_the_review_page_wears_the_brand_assigned_to_cleeng(app, client, mocked):
    save_brand(ACTOR, brand_input(name="Default Co"))
    streaming = save_brand(
        ACTOR,
        brand_input(
            name="StreamCo Plus",
            primary="#0b6e4f",
            support_email="help@streamco.example",
            terms_url="https://streamco.example/terms",
            copy_blocks={"review_intro": "Cancel any time from your account."},
        ),
    )
    assign(ACTOR, "cleeng", "*", streaming.id)
    page = open_review(client, mocked).text
    assert '<span class="brand">StreamCo Plus</span>' in page
    assert "Default Co" not in page
    assert f"/brand/{streaming.id}/theme.css?v={streaming.version}" in page
    assert "Cancel any time from your account." in page
    assert "help@streamco.example" in page
    assert 'href="https://streamco.example/terms"' in page
    # Cleeng's own breakdown, unchanged by the move to the sandboxed environment.
    for expected in (
        "Premium Monthly",
        "Renewed every month · S619117184_NL",
        "Offer price (per month)",
        "Coupon <strong>WELCOME20</strong>",
        "−€2.00",
        "Tax (21%)",
        "+€1.68",
        "Then €12.10 per month from",
        "Pay €9.68",
    ):
        assert expected in page


def test_a_cleeng_order_opened_at_its_order_url_gets_the_cleeng_page(app, client, mocked):
    """The status page's "Return to your order" link and the pay-link email go to
    /orders/<ref>: a Cleeng order there is shown with Cleeng's own review page too."""
    page = open_review(client, mocked).text
    reference = page.split("/orders/", 1)[1].split("/", 1)[0]
    for url in (f"/orders/{reference}", f"/orders/{reference}/cancelled"):
        again = client.get(url)
        assert again.status_code == 200, url
        assert "Renewed every month · S619117184_NL" in again.text, url
        assert "+€1.68" in again.text, url
    assert "Payment not completed" in client.get(f"/orders/{reference}/cancelled").text


def test_a_published_override_of_the_cleeng_review_page_applies(app, client, console, mocked):
    marketer = console("marketer")
    source = (
        '{% extends "default:cleeng/review.html" %}\n'
        '{% block heading %}<h1 class="cleeng-headline">{{ _("Review your order") }}: '
        "{{ order.description|upper }}</h1>{% endblock %}\n"
    )
    saved = editor_post(marketer, "/admin/branding/templates/cleeng/review.html", source=source)
    assert saved.status_code == 303
    assert "no problems" in marketer.get(saved.headers["Location"]).text
    published = editor_post(
        marketer, "/admin/branding/templates/cleeng/review.html/publish", version="1"
    )
    assert published.status_code == 303
    page = open_review(client, mocked).text
    assert '<h1 class="cleeng-headline">Review your order: PREMIUM MONTHLY</h1>' in page
    assert "Pay €9.68" in page  # the rest of the default page is still there


def test_a_broken_override_of_the_cleeng_review_page_falls_back(app, client, mocked, caplog):
    publish_raw(
        "cleeng/review.html",
        '{% extends "default:cleeng/review.html" %}'
        "{% block heading %}<h1>{{ data.no_such_field }}</h1>{% endblock %}",
    )
    with caplog.at_level("ERROR", logger="portal.branding"):
        page = open_review(client, mocked).text
    assert "<h1>Review your order</h1>" in page
    assert "Pay €9.68" in page
    assert "no_such_field" in caplog.text
    with db.reader() as session:
        row = session.scalar(select(TemplateOverride))
    assert row.failure_count == 1
    assert "cleeng/review.html, line 1" in row.last_failure


def test_a_french_learner_reads_the_cleeng_review_page_in_french(app, client, mocked):
    page = open_review(client, mocked, **{"Accept-Language": "fr-FR,fr;q=0.9"}).text
    assert '<html lang="fr">' in page
    for expected in (
        "Vérifiez votre commande",
        "Renouvelé chaque mois",
        "Prix de l’offre (par mois)",
        "hors taxes",
        "Taxe (21 %)",
        "+1,68\N{NO-BREAK SPACE}€",
        "Puis 12,10\N{NO-BREAK SPACE}€ par mois à partir du",
        "9,68\N{NO-BREAK SPACE}€",
        "Payer 9,68\N{NO-BREAK SPACE}€",
        "Votre carte est enregistrée",
    ):
        assert expected in page, expected
    assert "Review your order" not in page


def test_a_free_trial_in_french(app, client, mocked):
    from tests.test_cleeng import free_trial_order

    page = open_review(client, mocked, free_trial_order(), **{"Accept-Language": "fr"}).text
    assert "Commencer votre essai gratuit" in page
    assert "Total aujourd’hui" in page
    assert "Renouvelé chaque année" in page


def test_every_cleeng_sample_previews_and_checks_clean(app, console):
    marketer = console("marketer")
    cleeng = samples.samples_for("cleeng/review.html")
    assert {s.key for s in cleeng} == {
        "cleeng-open",
        "cleeng-cancelled",
        "cleeng-trial",
        "cleeng-jpy",
    }
    with app.test_request_context():
        clean = overrides.check("cleeng/review.html", '{% extends "default:cleeng/review.html" %}')
    assert clean == []
    bar = {  # the preview bar speaks the page's language, like the rest of the page
        "en": "Preview with sample data: nothing here is live.",
        "fr": "Aperçu avec des données d’exemple : rien n’est réel ici.",
    }
    for sample in cleeng:
        for lang in ("en", "fr"):
            shown = marketer.get(
                f"/admin/branding/templates/cleeng/review.html/preview?state={sample.key}"
                f"&lang={lang}"
            )
            assert shown.status_code == 200, (sample.key, lang)
            assert bar[lang] in shown.text
    trial = marketer.get("/admin/branding/templates/cleeng/review.html/preview?state=cleeng-trial")
    assert "Start your free trial" in trial.text
    jpy = marketer.get("/admin/branding/templates/cleeng/review.html/preview?state=cleeng-jpy")
    assert "Offer price (per week)" in jpy.text
    assert "¥550" in jpy.text
    assert "Tax (10%)" in jpy.text
    assert "+¥50" in jpy.text
    # The shared frame's check covers the Cleeng page too: an override of base.html that breaks
    # on the Cleeng page only is caught before publishing.
    broken_frame = (
        '{% extends "default:base.html" %}{% block footer %}'
        "{% if data is defined %}{{ data.no_such_field }}{% endif %}{{ super() }}{% endblock %}"
    )
    with app.test_request_context():
        problems = overrides.check("base.html", broken_frame)
    assert problems
    assert all(p.where.startswith("Cleeng: ") for p in problems), problems
    assert "no_such_field" in problems[0].message


def paid_cleeng_order(**fields):
    values = {
        "state": OrderState.FULFIL_FAILED,
        "platform": "cleeng",
        "platform_ref": ORDER_ID,
        "description": "Premium Monthly",
        "sku": "S619117184_NL",
        "quantity": 1,
        "currency": "EUR",
        "amount_minor": 968,
        "list_unit_minor": 1000,
        "promo_code": "WELCOME20",
        "amount_paid_minor": 968,
        "tax_paid_minor": 0,
        "platform_data": {
            "cleeng_order_id": ORDER_ID,
            "customer_id": "927751142",
            "period": "month",
            "offer_price_minor": 1000,
            "discount_minor": 200,
            "tax_minor": 168,
            "tax_percent": "21",
            "trial": False,
        },
    }
    values.update(fields)
    return make_order(**values)


def test_a_paid_cleeng_order_shows_the_tax_included_in_its_price(app, client):
    order = paid_cleeng_order()
    page = client.get(f"/orders/{order.reference}/status").text
    assert "<dt>Tax (21%), included</dt><dd>€1.68</dd>" in page
    assert "<dt>Tax</dt>" not in page
    assert "Total paid" in page
    assert "€9.68" in page
    french = client.get(f"/orders/{order.reference}/status", headers={"Accept-Language": "fr"}).text
    assert "Taxe (21 %) incluse" in french
    # Other platforms show the tax Stripe charged, and no tax line when none applies.
    other = make_order(state=OrderState.FULFIL_FAILED, platform_ref="p2other", tax_paid_minor=99)
    assert "<dt>Tax</dt><dd>$0.99</dd>" in client.get(f"/orders/{other.reference}/status").text
    untaxed = make_order(state=OrderState.FULFIL_FAILED, platform_ref="p3other", tax_paid_minor=0)
    assert "<dt>Tax" not in client.get(f"/orders/{untaxed.reference}/status").text
