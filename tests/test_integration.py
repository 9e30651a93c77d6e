"""Whole purchases through real gunicorn (two worker processes) against the sandbox stand-ins,
over real HTTP on loopback, through the real `stripe` SDK and real webhook signatures."""

from __future__ import annotations

import re
import time

import pytest
import requests

CARD_OK = "4242 4242 4242 4242"
CARD_DECLINED = "4000 0000 0000 0002"


class Learner:
    """A browser without JavaScript: follows forms and redirects, keeps cookies."""

    def __init__(self, base: str):
        self.base = base
        self.http = requests.Session()

    def start(self, offer="intro-python", quantity=1, promo=""):
        response = self.http.post(
            f"{self.base}/sandbox/skilljar/academy/checkout",
            data={"offer": offer, "quantity": str(quantity), "promo_code": promo},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert "/skilljar/checkout?purchase_id=" in response.url
        return response

    def submit(self, page, action_suffix: str, **fields):
        action = re.search(rf'action="([^"]*{action_suffix})"', page.text).group(1)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        url = action if action.startswith("http") else self.base + action
        return self.http.post(url, data={"csrf_token": token, **fields}, timeout=30)

    def pay_at_stripe(self, stripe_page, card: str):
        return self.http.post(
            stripe_page.url,
            data={
                "email": "ada@example.com",
                "card_number": card,
                "expiry": "12/30",
                "cvc": "123",
                "name": "Ada Lovelace",
            },
            timeout=30,
        )


def purchase_state(page) -> str:
    return re.search(r'id="purchase-state">(\w+)<', page.text).group(1)


@pytest.fixture
def learner(gunicorn_sandbox):
    return Learner(gunicorn_sandbox.url)


def test_a_learner_pays_and_lands_on_the_academy_thank_you_page(learner, gunicorn_sandbox):
    review = learner.start(quantity=2, promo="LAUNCH20")
    assert "Pay $78.40" in review.text
    stripe_page = learner.submit(review, "/pay")
    assert "/sandbox/stripe/pay/cs_test_" in stripe_page.url
    thanks = learner.pay_at_stripe(stripe_page, CARD_OK)
    assert "/sandbox/skilljar/academy/thank-you/" in thanks.url
    assert purchase_state(thanks) == "SUCCESS"
    assert "pi_test_" in thanks.text  # the PaymentIntent id reached Skilljar
    # The webhook arrives after the return page already fulfilled: still one SUCCESS.
    time.sleep(1.0)
    calls = requests.get(f"{gunicorn_sandbox.url}/sandbox/", timeout=10).text
    assert calls.count("/fulfill") == 1
    log = gunicorn_sandbox.log_path.read_text()
    assert "Traceback" not in log
    assert '"path":"/webhooks/stripe","status":200' in log


def test_a_declined_card_stays_on_the_payment_page(learner):
    review = learner.start()
    stripe_page = learner.submit(review, "/pay")
    declined = learner.pay_at_stripe(stripe_page, CARD_DECLINED)
    assert declined.status_code == 402
    assert "Your card was declined." in declined.text
    # The learner can still pay with another card.
    thanks = learner.pay_at_stripe(stripe_page, CARD_OK)
    assert purchase_state(thanks) == "SUCCESS"


def test_cancel_then_return_to_the_academy_cancels_the_purchase(learner):
    review = learner.start()
    stripe_page = learner.submit(review, "/pay")
    cancel_url = re.search(r'href="([^"]+/cancelled)"', stripe_page.text).group(1)
    back = learner.http.get(cancel_url, timeout=30)
    assert "Payment not completed" in back.text
    academy = learner.submit(back, "/cancel")
    assert "/sandbox/skilljar/academy" in academy.url
    assert "CANCELLED" in academy.text
    # The Stripe session was expired first, so it can no longer be paid.
    late = learner.pay_at_stripe(learner.http.get(stripe_page.url, timeout=30), CARD_OK)
    assert late.status_code in {404, 409}


def test_cancel_then_pay_again_reuses_the_open_session(learner):
    review = learner.start()
    first = learner.submit(review, "/pay")
    cancel_url = re.search(r'href="([^"]+/cancelled)"', first.text).group(1)
    back = learner.http.get(cancel_url, timeout=30)
    again = learner.submit(back, "/pay")
    assert again.url == first.url
    thanks = learner.pay_at_stripe(again, CARD_OK)
    assert purchase_state(thanks) == "SUCCESS"
