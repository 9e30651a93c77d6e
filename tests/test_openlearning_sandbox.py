"""OpenLearning end to end over real HTTP: the sandbox course page's "Join now" posts a freshly
signed token to the portal, the learner pays on the sandbox Stripe page, the portal enrols them
through the sandbox enrolment API and sends them back to the course; outages are retried by the
job worker."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import urljoin

import pytest
import requests

from portal.jobs import Worker
from portal.models import OrderState
from portal.orders import find as find_order
from portal.orders import refresh as reload
from portal.sandbox.openlearning_api import COURSES

CARD = {"email": "ada@example.com", "card_number": "4242424242424242", "expiry": "12/30"}
CLASS = COURSES["python-foundations"]["class"]
PROGRAM = COURSES["data-analytics-program"]["program"]


@pytest.fixture
def server(sandbox_server):
    """The sandbox portal with Stripe webhooks switched off, so the learner's return page is what
    records the payment (the fixture's default of -1 does not pass the settings parser; the
    store control accepts it and means "don't deliver")."""
    portal = sandbox_server(SANDBOX_WEBHOOK_DELAY_SECONDS="0")
    portal.control(webhook_delay_seconds=-1)
    return portal


def course_page(server, browser, slug: str, learner: str) -> requests.Response:
    page = browser.get(
        f"{server.url}/sandbox/openlearning/courses/{slug}/", params={"learner": learner}
    )
    assert page.status_code == 200, page.text
    return page


def join(server, browser, slug: str, learner: str) -> tuple[requests.Response, str]:
    """Press "Join now": returns the page the portal's 303 sends the browser to (Post/Redirect/
    Get: the POST itself never answers with a page) and the token that was posted."""
    page = course_page(server, browser, slug, learner)
    action = re.search(r'action="([^"]+)" class="actions" id="join"', page.text).group(1)
    token = re.search(r'name="jwt" value="([^"]+)"', page.text).group(1)
    assert action == f"{server.url}/openlearning/enrol"
    posted = browser.post(action, data={"jwt": token}, allow_redirects=False)
    assert posted.status_code == 303, posted.text
    location = urljoin(posted.url, posted.headers["Location"])
    assert location.startswith(f"{server.url}/")
    return browser.get(location, allow_redirects=False), token


def pay(server, browser, review: requests.Response) -> requests.Response:
    """The review page's Pay button, then the sandbox Stripe page with a card that pays; returns
    the portal's answer to Stripe's success_url."""
    assert review.status_code == 200, review.text
    action = re.search(r'action="([^"]+/pay)"', review.text).group(1)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    to_stripe = browser.post(server.url + action, data={"csrf_token": csrf}, allow_redirects=False)
    assert to_stripe.status_code == 303
    stripe_page = to_stripe.headers["Location"]
    assert stripe_page.startswith(f"{server.url}/sandbox/stripe/pay/")
    paid = browser.post(stripe_page, data={**CARD, "cvc": "123"}, allow_redirects=False)
    assert paid.status_code == 303, paid.text
    return browser.get(paid.headers["Location"], allow_redirects=False)


def enrolment_calls(server) -> list[dict]:
    return [c for c in server.store.calls("openlearning") if c["method"] == "POST"]


def order_for(token: str):
    claims_part = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(claims_part + "=" * (-len(claims_part) % 4)))
    return find_order("openlearning", claims["jti"])


def test_join_pay_enrol_and_land_on_the_course(server):
    browser = requests.Session()
    review, token = join(server, browser, "python-foundations", "ada")
    assert "Python Foundations" in review.text
    assert "A$149.00" in review.text
    back = pay(server, browser, review)
    assert back.status_code == 303
    learn_url = f"{server.url}/sandbox/openlearning/courses/python-foundations/learn?learner=ada"
    assert back.headers["Location"] == learn_url
    course = browser.get(back.headers["Location"])
    assert re.search(r'id="enrolment-state">(\w[\w ]*)<', course.text).group(1) == "enrolled"
    (call,) = enrolment_calls(server)
    assert call["path"] == "/sandbox/openlearning/v2.2/enrolments/"
    assert call["body"] == f"class={CLASS}&user=ada"
    assert call["status"] == 200
    assert order_for(token).state == OrderState.FULFILLED
    # The course page now knows the learner is enrolled.
    assert "is enrolled" in course_page(server, browser, "python-foundations", "ada").text


def test_program_join_enrols_the_learner_in_the_program(server):
    browser = requests.Session()
    review, token = join(server, browser, "data-analytics-program", "grace")
    assert "$990.00" in review.text
    back = pay(server, browser, review)
    assert back.headers["Location"].endswith(
        "/sandbox/openlearning/courses/data-analytics-program/learn?learner=grace"
    )
    (call,) = enrolment_calls(server)
    assert call["path"] == (
        f"/sandbox/openlearning/v2.2/institutions/sandbox-institution/programs/{PROGRAM}"
        "/enrolments/"
    )
    assert json.loads(call["body"]) == {"user": "grace"}
    assert call["status"] == 200
    assert order_for(token).state == OrderState.FULFILLED


def test_zero_decimal_price_is_charged_in_whole_yen(server):
    browser = requests.Session()
    review, token = join(server, browser, "kanji-in-context", "hiro")
    assert "¥12,000" in review.text
    pay(server, browser, review)
    order = order_for(token)
    assert (order.amount_paid_minor, order.currency) == (12000, "JPY")
    assert order.state == OrderState.FULFILLED


def test_enrolment_outage_is_retried_by_the_worker_until_the_learner_is_enrolled(server):
    server.control(openlearning_fault_rate=1)
    browser = requests.Session()
    review, token = join(server, browser, "python-foundations", "lin")
    back = pay(server, browser, review)
    status_url = urljoin(server.url, back.headers["Location"])
    assert status_url.endswith("/status")
    status = browser.get(status_url, allow_redirects=False)
    assert "Payment received" in status.text
    assert order_for(token).state == OrderState.PAID
    assert {c["status"] for c in enrolment_calls(server)} == {503}

    server.control(openlearning_fault_rate=0)
    Worker(server.services, poll_seconds=0).run(once=True)
    assert order_for(token).state == OrderState.FULFILLED
    assert [c["status"] for c in enrolment_calls(server)][-1] == 200
    final = browser.get(status_url, allow_redirects=False)
    assert final.status_code == 303
    assert final.headers["Location"].endswith(
        "/sandbox/openlearning/courses/python-foundations/learn?learner=lin"
    )


def test_replayed_join_after_enrolment_says_already_enrolled(server):
    browser = requests.Session()
    review, token = join(server, browser, "python-foundations", "ada")
    pay(server, browser, review)
    calls = len(server.store.calls())
    again = browser.post(f"{server.url}/openlearning/enrol", data={"jwt": token})
    assert again.status_code == 200
    assert again.history[0].status_code == 303
    assert again.url.endswith("/enrolled")
    assert "You’re already enrolled" in again.text
    assert "/sandbox/openlearning/courses/python-foundations/learn?learner=ada" in again.text
    assert len(server.store.calls()) == calls  # no new Stripe session, no new enrolment


def test_learner_enrolled_elsewhere_is_already_enrolled_not_a_failure(server):
    """A learner OpenLearning already enrolled (by an administrator, outside the portal) pays:
    OpenLearning answers "already enrolled", and the order is fulfilled, not failed."""
    key = server.app.config["PORTAL"].openlearning_api_key
    direct = requests.post(
        f"{server.url}/sandbox/openlearning/v2.2/enrolments/",
        params={"api_key": key},
        data={"class": CLASS, "user": "ada"},
        timeout=5,
    )
    assert direct.status_code in {200, 201}, direct.text
    browser = requests.Session()
    review, token = join(server, browser, "python-foundations", "ada")
    back = pay(server, browser, review)
    assert back.headers["Location"].endswith("/learn?learner=ada")
    assert [c["status"] for c in enrolment_calls(server)][-1] == 400
    order = reload(order_for(token))
    assert order.state == OrderState.FULFILLED


def test_join_now_again_shows_the_same_order_and_after_paying_the_enrolment(server):
    """Every "Join now" posts a new token; the same learner and class get one order, so a
    second click (or a second tab) can never lead to paying twice."""
    browser = requests.Session()
    first, first_token = join(server, browser, "python-foundations", "ada")
    second, second_token = join(server, browser, "python-foundations", "ada")
    assert first_token != second_token
    reference = re.search(r"/orders/(ord_[\w-]+)/pay", first.text).group(1)
    assert re.search(r"/orders/(ord_[\w-]+)/pay", second.text).group(1) == reference
    pay(server, browser, second)
    again, _token = join(server, browser, "python-foundations", "ada")
    assert again.status_code == 200
    assert "/pay" not in again.text  # the already-enrolled page: nothing to pay
    assert [c["status"] for c in enrolment_calls(server)] == [200]
    other, _token = join(server, browser, "python-foundations", "grace")
    assert re.search(r"/orders/(ord_[\w-]+)/pay", other.text).group(1) != reference


def test_sandbox_enrolment_api_refuses_a_wrong_api_key(server):
    url = f"{server.url}/sandbox/openlearning/v2.2/enrolments/"
    response = requests.post(
        url, params={"api_key": "wrong"}, data={"class": CLASS, "user": "ada"}, timeout=5
    )
    assert response.status_code == 401
    assert enrolment_calls(server)[-1]["status"] == 401


def test_course_page_without_a_learner_starts_a_new_demo_learner(server):
    page = requests.get(f"{server.url}/sandbox/openlearning/courses/python-foundations/", timeout=5)
    assert page.status_code == 200
    assert re.search(r'id="learner">learner-[0-9a-f]{8}<', page.text)
    assert 'name="jwt"' in page.text
    home = requests.get(f"{server.url}/sandbox/", timeout=5)
    assert "/sandbox/openlearning/" in home.text
