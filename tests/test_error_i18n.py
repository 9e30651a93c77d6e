"""Error texts raised in Python (a `CheckoutError`'s title and message, from the platforms and the
checkout core) reach a French learner in French, like the templates' own text; JSON errors for
developers (the API, `Accept: application/json`) stay English. Every such text is marked for the
catalogue, so none can slip through untranslated."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from portal import i18n
from portal.platforms.openlearning.tokens import REFUSALS
from tests.test_cleeng import SETTINGS as CLEENG_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
FRENCH = {"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"}


@pytest.fixture
def app(make_app):
    return make_app(**CLEENG_SETTINGS)


def test_a_french_learner_with_a_bad_checkout_link_reads_french(client, mocked):
    page = client.get("/skilljar/checkout?purchase_id=NOT-VALID", headers=FRENCH)
    assert page.status_code == 400
    assert '<html lang="fr">' in page.text
    assert "<h1>Ce lien de paiement n’est pas valide</h1>" in page.text
    assert "Le lien qui vous a mené ici est incomplet ou endommagé." in page.text
    assert "Erreur 400" in page.text
    assert "This checkout link is not valid" not in page.text
    assert len(mocked.calls) == 0  # refused before any call, in any language
    english = client.get("/skilljar/checkout?purchase_id=NOT-VALID")
    assert "<h1>This checkout link is not valid</h1>" in english.text


def test_cleeng_and_openlearning_refusals_are_french_too(client, mocked):
    cleeng = client.get("/cleeng/checkout?orderId=abc", headers=FRENCH)
    assert cleeng.status_code == 400
    assert "<h1>Ce lien de paiement n’est pas valide</h1>" in cleeng.text
    assert "Veuillez revenir à la page d’abonnement" in cleeng.text
    openlearning = client.post("/openlearning/enrol", data={}, headers=FRENCH)
    assert openlearning.status_code == 400
    assert "<h1>Cette demande d’inscription est incomplète</h1>" in openlearning.text
    assert "choisir à nouveau « Join now »" in openlearning.text
    unknown = client.get("/orders/ord_doesnotexist123/status", headers=FRENCH)
    assert unknown.status_code == 404
    assert "<h1>Commande introuvable</h1>" in unknown.text


def test_json_errors_for_developers_stay_english(client):
    answer = client.get(
        "/skilljar/checkout?purchase_id=NOT-VALID",
        headers={**FRENCH, "Accept": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.json["error"]["title"] == "This checkout link is not valid"
    assert answer.json["error"]["message"].startswith("The link that brought you here")
    api = client.get("/api/v1/orders/ord_doesnotexist123", headers=FRENCH)
    assert api.status_code in {401, 404}
    assert api.mimetype == "application/json"
    assert "introuvable" not in api.text
    assert "Veuillez" not in api.text


def test_every_refusal_text_is_translated_into_french():
    for status, title, message in REFUSALS.values():
        assert i18n.gettext("fr", title) != title, title
        assert i18n.gettext("fr", message) != message, message
        assert status in {400, 401}


def _checkout_errors_with_unmarked_text(path: Path) -> list[str]:
    """CheckoutError(status, title, message) calls whose title or message is a plain string
    instead of N_("...") (or a value computed elsewhere, which must be marked where it is)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "CheckoutError"
        ):
            continue
        for argument in node.args[1:3]:
            if isinstance(argument, ast.Constant | ast.JoinedStr | ast.BinOp):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_learner_error_text_raised_in_python_is_marked_for_the_catalogue():
    unmarked = []
    for path in sorted((ROOT / "portal").rglob("*.py")):
        unmarked += _checkout_errors_with_unmarked_text(path)
    assert unmarked == []
    # And what N_ marks is extracted: babel.cfg reads the modules that raise them.
    config = (ROOT / "babel.cfg").read_text()
    for module in ("portal/checkout/*.py", "portal/errors.py", "portal/platforms/**.py"):
        assert f"[python: {module}]" in config


def raise_money_error():
    from portal.money import to_minor

    return str(to_minor("78.401", "usd"))  # three decimals: USD has two


def test_a_refused_amount_is_explained_to_the_learner_in_their_language(make_app):
    app = make_app()
    app.add_url_rule("/test-money-error", view_func=raise_money_error)
    client = app.test_client()
    page = client.get("/test-money-error", headers=FRENCH)
    assert page.status_code == 400
    assert "<h1>Ce montant ne peut pas être payé</h1>" in page.text
    assert "Aucun montant ne vous a été débité." in page.text
    assert "78.401" not in page.text  # the developer's detail stays in the log
    english = client.get("/test-money-error")
    assert "You have not been charged." in english.text
    answer = client.get("/test-money-error", headers={"Accept": "application/json"})
    assert answer.status_code == 400
    assert "78.401" in answer.json["error"]["message"]


def test_the_sandbox_bar_speaks_the_learners_language(make_app, tmp_path):
    app = make_app(
        SANDBOX="1",
        SANDBOX_DATABASE_URL=f"sqlite:///{tmp_path / 'sandbox.db'}",
        PUBLIC_URL="http://127.0.0.1:8000",  # the sandbox's own return URLs are plain http here
    )
    client = app.test_client()
    french = client.get("/orders/ord_doesnotexist123/status", headers=FRENCH)
    assert 'aria-label="Bac à sable"' in french.text
    assert "Mode bac à sable : aucun argent réel ne circule." in french.text
    assert "Sandbox mode" not in french.text
    english = client.get("/orders/ord_doesnotexist123/status")
    assert "Sandbox mode: no real money moves." in english.text
