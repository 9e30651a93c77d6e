"""OpenLearning external enrolment with Stripe and OpenLearning stood in by `responses`: every way
a token is refused (and that nothing is stored then), the review, the exact enrolment requests,
retries, replays, the key-set cache, and the settings that stop the app."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from joserfc.jwk import KeySet, RSAKey
from responses import matchers
from sqlalchemy import func, select

from portal import ConfigError
from portal.db import db
from portal.jobs import Worker
from portal.models import Job, Order, OrderEvent, OrderState, UsedToken
from portal.platforms.openlearning import routes as openlearning
from tests.conftest import STRIPE_BASE

OL_BASE = "https://openlearning.test/v2.2"
ENROLMENTS_URL = f"{OL_BASE}/enrolments/"
JWKS_URL = "https://keys.openlearning.test/jwks.json"
SESSIONS_URL = f"{STRIPE_BASE}/v1/checkout/sessions"
API_KEY = "ol-unit-key"
AUDIENCE = "unit-institution"
COURSE = "64b7f0c2a1e4d3b2c1a09f11"
CLASS = "64b7f0c9a1e4d3b2c1a09f12"
PROGRAM = "64b7f1d0a1e4d3b2c1a09f31"
LEARNER = "5f1a2b3c4d5e6f7a8b9c0d1e"
COURSE_URL = "https://www.openlearning.com/unit-institution/courses/python-foundations/"
PROGRAM_URL = f"{OL_BASE}/institutions/{AUDIENCE}/programs/{PROGRAM}/enrolments/"
DROP = object()

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def public_pem(private_key) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


OL_SETTINGS = {
    "OPENLEARNING_PUBLIC_KEY": public_pem(RSA_KEY),
    "OPENLEARNING_API_KEY": API_KEY,
    "OPENLEARNING_API_BASE": OL_BASE,
    "OPENLEARNING_AUDIENCE": AUDIENCE,
    "REDIRECT_HOSTS": "academy.test,www.openlearning.com",
}


@pytest.fixture
def app(make_app):
    """This module's app: OpenLearning configured with RSA_KEY's public half."""
    return make_app(**OL_SETTINGS)


# --- tokens, signed here with `cryptography` alone (not with the library under test) -----------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides) -> dict:
    now = int(time.time())
    data = {
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
        "sub": LEARNER,
        "aud": AUDIENCE,
        "title": "Python Foundations",
        "course": COURSE,
        "class": CLASS,
        "currency": "AUD",
        "price": "149.00",
        "redirect_url": COURSE_URL,
    }
    for name, value in overrides.items():
        if value is DROP:
            data.pop(name, None)
        else:
            data[name] = value
    return data


def program_claims(**overrides) -> dict:
    return claims(
        **{
            "course": DROP,
            "class": DROP,
            "program": PROGRAM,
            "title": "Data Analytics Professional Program",
            "currency": "USD",
            "price": "990.00",
            **overrides,
        }
    )


def sign(payload, key=RSA_KEY, alg="RS256", **header) -> str:
    """A compact JWS of `payload` (claims dict, or raw bytes) signed with `key` as `alg` says."""
    head = {"alg": alg, "typ": "JWT", **header}
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(body)}".encode()
    if alg == "RS256":
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "RS384":
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA384())
    elif alg == "EdDSA":
        signature = key.sign(signing_input)
    elif alg.startswith("HS"):
        signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    else:  # "none" and friends: no signature at all
        signature = b""
    return f"{signing_input.decode()}.{b64(signature)}"


def tampered(token: str, **changes) -> str:
    """The same signature over a payload that was edited afterwards."""
    head, body, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data.update(changes)
    return f"{head}.{b64(json.dumps(data).encode())}.{signature}"


# --- helpers --------------------------------------------------------------------------------------


ORDER_PAGE = re.compile(r"/(openlearning/)?orders/ord_[A-Za-z0-9_-]+(/enrolled)?")


def join(client, token):
    """Join now as a browser does it: the POST, then the GET of the order's page it is sent to
    with a 303 (other answers as they come)."""
    posted = client.post("/openlearning/enrol", data={"jwt": token})
    location = posted.headers.get("Location", "")
    if posted.status_code == 303 and ORDER_PAGE.fullmatch(
        location.removeprefix("http://portal.test")
    ):
        return client.get(location)
    return posted


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def title(html: str) -> str:
    return re.search(r"<h1>(.*?)</h1>", html, re.S).group(1).strip()


def orders() -> list[Order]:
    with db.reader() as session:
        return list(session.scalars(select(Order).order_by(Order.id)))


def used_tokens() -> list[UsedToken]:
    with db.reader() as session:
        return list(session.scalars(select(UsedToken)))


def order_row() -> Order:
    (order,) = orders()
    return order


def openlearning_calls(mocked) -> list:
    return [c.request for c in mocked.calls if c.request.url.startswith(OL_BASE)]


def stripe_calls(mocked) -> list:
    return [c.request for c in mocked.calls if c.request.url.startswith(STRIPE_BASE)]


def pay(client, mocked, review_html, checkout_session):
    """The Pay button, with Stripe's Checkout Session create stood in."""
    order = order_row()
    mocked.post(
        SESSIONS_URL,
        json=checkout_session(
            client_reference_id=order.reference,
            amount_total=order.amount_minor,
            amount_subtotal=order.amount_minor,
            currency=order.currency.lower(),
        ),
    )
    return client.post(f"/orders/{order.reference}/pay", data={"csrf_token": csrf(review_html)})


def come_back_paid(client, mocked, checkout_session):
    """Stripe's success_url, with the Checkout Session now complete and paid."""
    order = order_row()
    mocked.get(
        f"{SESSIONS_URL}/cs_test_1",
        json=checkout_session(
            client_reference_id=order.reference,
            status="complete",
            payment_status="paid",
            payment_intent="pi_test_1",
            url=None,
            amount_total=order.amount_minor,
            currency=order.currency.lower(),
        ),
    )
    return client.get(f"/orders/{order.reference}/return?session_id=cs_test_1")


def buy(client, mocked, checkout_session, token):
    review = join(client, token)
    assert review.status_code == 200, review.text
    pay(client, mocked, review.text, checkout_session)
    return come_back_paid(client, mocked, checkout_session)


def class_enrolment_answers(mocked, *answers):
    """Stand in OpenLearning's class enrolment, answering each call with the next of `answers`."""
    for status, body in answers:
        mocked.post(
            ENROLMENTS_URL,
            status=status,
            json=body,
            match=[
                matchers.query_param_matcher({"api_key": API_KEY}),
                matchers.urlencoded_params_matcher({"class": CLASS, "user": LEARNER}),
            ],
        )


ENROLLED = (200, {"meta": {"status": 200}, "data": {"id": "e1", "class": CLASS, "user": LEARNER}})


def run_worker(app, mocked) -> dict:
    """`flask portal worker --once`, in-process. Its periodic reconciliation lists no sessions."""
    mocked.get(SESSIONS_URL, json={"object": "list", "data": [], "has_more": False})
    return Worker(app.extensions["portal"], poll_seconds=0).run(once=True)


def assert_refused(response, status: int, heading: str) -> None:
    assert response.status_code == status, response.text
    assert heading in title(response.text)
    assert "choose “Join now” again" in response.text or "Join now" in response.text
    assert "Traceback" not in response.text
    assert orders() == []
    assert used_tokens() == []


# --- the review page ------------------------------------------------------------------------------


def test_class_token_shows_the_review_with_course_title_and_price(client, mocked):
    token_claims = claims()
    response = join(client, sign(token_claims))
    assert response.status_code == 200
    assert title(response.text) == "Review your order"
    assert "Python Foundations" in response.text
    assert "A$149.00" in response.text
    assert 'name="csrf_token"' in response.text
    assert response.headers["Cache-Control"] == "no-store"
    order = order_row()
    assert (order.platform, order.platform_ref) == ("openlearning", token_claims["jti"])
    assert (order.amount_minor, order.currency, order.quantity) == (14900, "AUD", 1)
    assert order.redirect_url == COURSE_URL
    assert order.state == OrderState.OPEN
    assert order.platform_data == {
        "kind": "class",
        "user": LEARNER,
        "institution": AUDIENCE,
        "course": COURSE,
        "class": CLASS,
        "program": None,
    }
    (used,) = used_tokens()
    assert (used.jti, used.issuer, used.order_id) == (token_claims["jti"], "openlearning", order.id)
    assert int(used.expires_at.timestamp()) == token_claims["exp"]
    assert len(mocked.calls) == 0  # nothing is asked of OpenLearning before payment


@pytest.mark.parametrize(
    ("currency", "price", "amount_minor"),
    [
        ("AUD", "149.00", 14900),
        ("AUD", 149.5, 14950),
        ("USD", 0, 0),
        ("JPY", 12000, 12000),
        ("JPY", "12000", 12000),
        ("KWD", "1.250", 1250),
    ],
)
def test_price_converts_to_minor_units_with_the_currency_exponent(
    client, currency, price, amount_minor
):
    response = join(client, sign(claims(currency=currency, price=price)))
    assert response.status_code == 200, response.text
    assert (order_row().amount_minor, order_row().currency) == (amount_minor, currency)


def test_token_inside_the_clock_skew_leeway_is_accepted(client):
    now = int(time.time())
    response = join(client, sign(claims(exp=now - 10, iat=now + 10, nbf=now + 10)))
    assert response.status_code == 200, response.text


def test_eddsa_token_from_the_institution_gateway_is_accepted(make_app):
    client = make_app(
        **{**OL_SETTINGS, "OPENLEARNING_PUBLIC_KEY": public_pem(ED_KEY)}
    ).test_client()
    response = join(client, sign(program_claims(), key=ED_KEY, alg="EdDSA"))
    assert response.status_code == 200, response.text
    assert order_row().platform_data["program"] == PROGRAM


# --- payment and enrolment ------------------------------------------------------------------------


def test_class_token_is_enrolled_after_payment_and_the_learner_returns_to_the_course(
    client, mocked, checkout_session
):
    class_enrolment_answers(mocked, ENROLLED)
    response = buy(client, mocked, checkout_session, sign(claims()))
    assert response.status_code == 303
    assert response.headers["Location"] == COURSE_URL
    create = stripe_calls(mocked)[0]
    body = dict(parse_qsl(create.body))
    assert body["line_items[0][price_data][currency]"] == "aud"
    assert body["line_items[0][price_data][unit_amount]"] == "14900"
    assert body["line_items[0][price_data][product_data][name]"] == "Python Foundations"
    (enrol,) = openlearning_calls(mocked)
    url = urlsplit(enrol.url)
    assert enrol.method == "POST"
    assert f"{url.scheme}://{url.netloc}{url.path}" == ENROLMENTS_URL
    assert parse_qs(url.query) == {"api_key": [API_KEY]}
    assert enrol.body == f"class={CLASS}&user={LEARNER}"
    assert enrol.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert enrol.headers["Accept"] == "application/json"
    order = order_row()
    assert order.state == OrderState.FULFILLED
    assert order.amount_paid_minor == 14900


def test_program_token_is_enrolled_in_the_institution_program(client, mocked, checkout_session):
    mocked.post(
        PROGRAM_URL,
        json={"meta": {"status": 200}, "data": {"id": "e2", "user": LEARNER}},
        match=[
            matchers.query_param_matcher({"api_key": API_KEY}),
            matchers.json_params_matcher({"user": LEARNER}),
        ],
    )
    response = buy(client, mocked, checkout_session, sign(program_claims()))
    assert response.status_code == 303
    assert response.headers["Location"] == COURSE_URL
    (enrol,) = openlearning_calls(mocked)
    url = urlsplit(enrol.url)
    assert enrol.method == "POST"
    assert f"{url.scheme}://{url.netloc}{url.path}" == PROGRAM_URL
    assert parse_qs(url.query) == {"api_key": [API_KEY]}
    assert json.loads(enrol.body) == {"user": LEARNER}
    assert enrol.headers["Content-Type"] == "application/json"
    assert order_row().state == OrderState.FULFILLED


@pytest.mark.parametrize(
    "answer",
    [
        (409, {"meta": {"status": 409}, "errors": ["Conflict"]}),
        (400, {"meta": {"status": 400}, "errors": {"user": ["User is already enrolled."]}}),
    ],
    ids=["409", "400 already enrolled"],
)
def test_already_enrolled_counts_as_success(client, mocked, checkout_session, answer):
    class_enrolment_answers(mocked, answer)
    response = buy(client, mocked, checkout_session, sign(claims()))
    assert response.headers["Location"] == COURSE_URL
    assert order_row().state == OrderState.FULFILLED
    with db.reader() as session:
        notes = session.scalars(select(OrderEvent.message).where(OrderEvent.kind == "job")).all()
    assert any("already enrolled" in note for note in notes)


def test_enrolment_outage_is_retried_until_it_succeeds(make_app, mocked, checkout_session):
    app = make_app(**OL_SETTINGS, RETRY_MAX_ATTEMPTS="6")
    client = app.test_client()
    class_enrolment_answers(
        mocked, (503, {"meta": {"status": 503}}), (502, {}), (429, {}), ENROLLED
    )
    response = buy(client, mocked, checkout_session, sign(claims()))
    status = client.get(response.headers["Location"])
    assert "Payment received" in status.text
    assert order_row().state == OrderState.PAID
    for _ in range(5):
        if order_row().state != OrderState.PAID:
            break
        assert run_worker(app, mocked)["dead"] == 0
    assert order_row().state == OrderState.FULFILLED
    enrolments = openlearning_calls(mocked)
    assert [c.body for c in enrolments] == [f"class={CLASS}&user={LEARNER}"] * 4
    final = client.get(f"/orders/{order_row().reference}/status")
    assert final.status_code == 303
    assert final.headers["Location"] == COURSE_URL


def test_enrolment_timeout_is_retried_not_lost(app, client, mocked, checkout_session):
    mocked.post(ENROLMENTS_URL, body=requests.Timeout("read timed out"))
    buy(client, mocked, checkout_session, sign(claims()))
    assert order_row().state == OrderState.PAID
    with db.reader() as session:
        job = session.scalar(select(Job).where(Job.kind == "fulfil"))
    assert job.state == "queued"
    assert "timed out" in job.last_error


def test_rejected_enrolment_is_not_retried_and_alerts_an_operator(client, mocked, checkout_session):
    class_enrolment_answers(mocked, (401, {"meta": {"status": 401}, "errors": ["Bad key"]}))
    buy(client, mocked, checkout_session, sign(claims()))
    order = order_row()
    assert order.state == OrderState.FULFIL_FAILED
    assert "HTTP 401" in order.failure_reason
    assert len(openlearning_calls(mocked)) == 1
    status = client.get(f"/orders/{order.reference}/status")
    assert "Please do not pay again" in status.text


def test_cancel_returns_to_the_course_without_calling_openlearning(
    client, mocked, checkout_session
):
    review = join(client, sign(claims()))
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    expired = checkout_session(client_reference_id=reference, status="expired", url=None)
    mocked.post(f"{SESSIONS_URL}/cs_test_1/expire", json=expired)
    mocked.get(f"{SESSIONS_URL}/cs_test_1", json=expired)
    page = client.get(f"/orders/{reference}/cancelled")
    response = client.post(f"/orders/{reference}/cancel", data={"csrf_token": csrf(page.text)})
    assert response.status_code == 303
    assert response.headers["Location"] == COURSE_URL
    assert order_row().state == OrderState.CANCELLED
    assert openlearning_calls(mocked) == []


def test_api_key_never_reaches_the_order_timeline(client, mocked, checkout_session):
    class_enrolment_answers(mocked, ENROLLED)
    buy(client, mocked, checkout_session, sign(claims()))
    with db.reader() as session:
        events = session.scalars(select(OrderEvent).where(OrderEvent.kind == "http")).all()
    calls = [e.message for e in events if "openlearning.test" in e.message]
    assert calls
    assert all(API_KEY not in message for message in calls)
    assert all("api_key=%5Bredacted%5D" in message for message in calls)


# --- replays --------------------------------------------------------------------------------------


def test_replayed_token_shows_the_same_order_and_creates_nothing_new(client, mocked):
    token = sign(claims())
    first = join(client, token)
    second = join(client, token)
    assert second.status_code == 200
    reference = order_row().reference
    assert reference in first.text
    assert reference in second.text
    assert len(used_tokens()) == 1
    assert len(mocked.calls) == 0


def test_replayed_token_after_enrolment_says_already_enrolled_and_links_back(
    client, mocked, checkout_session
):
    class_enrolment_answers(mocked, ENROLLED)
    token = sign(claims())
    buy(client, mocked, checkout_session, token)
    calls_before = len(mocked.calls)
    again = join(client, token)
    assert again.status_code == 200
    assert title(again.text) == "You’re already enrolled"
    assert f'href="{COURSE_URL}"' in again.text
    assert "A$149.00" in again.text
    assert len(mocked.calls) == calls_before  # no second payment, no second enrolment
    assert len(orders()) == 1


def test_replayed_token_while_payment_is_pending_shows_the_status(client, mocked, checkout_session):
    class_enrolment_answers(mocked, (503, {}))
    token = sign(claims())
    buy(client, mocked, checkout_session, token)
    again = join(client, token)
    assert again.status_code == 303
    assert again.headers["Location"].endswith(f"/orders/{order_row().reference}/status")
    assert len(orders()) == 1


def test_simultaneous_posts_of_one_token_open_one_order(app):
    token = sign(claims())
    results = []

    def post():
        results.append(join(app.test_client(), token).status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [200] * 6
    assert len(orders()) == 1
    assert len(used_tokens()) == 1


def test_a_post_that_finds_its_token_spent_meanwhile_shows_the_order(app, monkeypatch):
    """The interleaving behind a rare failure of the test above: this post looks for the
    token's order (none yet), then a simultaneous post of the same token opens the order and
    spends the token, then this post finds the token used. It must show that order, not refuse
    the learner with "already used"."""
    token = sign(claims())
    looked_up = openlearning._order_of_token
    raced = []

    def other_post_lands_right_after(jti):
        found = looked_up(jti)
        if not raced:
            raced.append(True)
            assert join(app.test_client(), token).status_code == 200
        return found

    monkeypatch.setattr(openlearning, "_order_of_token", other_post_lands_right_after)
    response = join(app.test_client(), token)
    assert response.status_code == 200
    assert raced == [True]
    assert f"/orders/{orders()[0].reference}/pay" in response.text
    assert len(orders()) == 1
    assert len(used_tokens()) == 1


def test_used_token_whose_order_is_gone_is_refused(client):
    token_claims = claims()
    with db.transaction() as session:
        session.add(UsedToken(jti=token_claims["jti"], issuer="openlearning"))
    response = join(client, sign(token_claims))
    assert response.status_code == 400
    assert title(response.text) == "This enrolment request was already used"
    assert orders() == []


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda: sign(claims(), alg="none"), id="alg none"),
        pytest.param(lambda: sign(claims(), alg="None"), id="alg None"),
        pytest.param(
            lambda: sign(claims(), key=public_pem(RSA_KEY).encode(), alg="HS256"),
            id="HS256 with the public key as secret",
        ),
        pytest.param(lambda: sign(claims(), key=OTHER_RSA_KEY), id="signed by another key"),
        pytest.param(lambda: sign(claims(), alg="RS384"), id="RS384"),
        pytest.param(lambda: sign(claims(), key=ED_KEY, alg="EdDSA"), id="EdDSA, RSA configured"),
        pytest.param(lambda: tampered(sign(claims()), price="0.01"), id="tampered price"),
        pytest.param(lambda: tampered(sign(claims()), sub="someone-else"), id="tampered sub"),
        pytest.param(lambda: sign(claims())[:-4] + "AAAA", id="tampered signature"),
        pytest.param(lambda: sign(claims()).rsplit(".", 1)[0] + ".", id="signature removed"),
    ],
)
def test_token_without_a_valid_openlearning_signature_is_refused(client, mocked, make_token):
    response = join(client, make_token())
    assert_refused(response, 401, "could not verify")
    assert len(mocked.calls) == 0


def test_token_signed_with_the_public_key_as_hmac_secret_is_refused_in_every_encoding(client):
    pem = public_pem(RSA_KEY).encode()
    der = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, pem.strip(), der):
        for alg in ("HS256", "HS384", "HS512"):
            assert join(client, sign(claims(), key=secret, alg=alg)).status_code == 401
    assert orders() == []


@pytest.mark.parametrize(
    ("overrides", "heading"),
    [
        ({"exp": int(time.time()) - 3600}, "has expired"),
        ({"exp": DROP}, "incomplete"),
        ({"exp": "tomorrow"}, "incomplete"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"iat": int(time.time()) + 3600}, "not valid yet"),
    ],
    ids=["expired", "no exp", "exp not a date", "future nbf", "future iat"],
)
def test_token_outside_its_validity_window_is_refused(client, overrides, heading):
    status = 400 if heading == "incomplete" else 401
    assert_refused(join(client, sign(claims(**overrides))), status, heading)


@pytest.mark.parametrize(
    "audience",
    [DROP, "another-institution", ["another-institution"], "", 42],
    ids=["missing", "other", "list without ours", "empty", "number"],
)
def test_token_for_another_audience_is_refused(client, audience):
    response = join(client, sign(claims(aud=audience)))
    assert response.status_code == 401
    assert "another school" in title(response.text)
    assert orders() == []


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "...",
        "eyJhbGciOiJSUzI1NiJ9",
        "eyJhbGciOiJSUzI1NiJ9.e30",
        "%%%.%%%.%%%",
        "x" * 20000,
    ],
    ids=["word", "three dots of letters", "dots", "header only", "no signature", "symbols", "huge"],
)
def test_garbage_instead_of_a_token_is_refused(client, mocked, token):
    assert_refused(join(client, token), 400, "not valid")
    assert len(mocked.calls) == 0


def test_signed_payload_that_is_not_a_claims_object_is_refused(client):
    assert_refused(join(client, sign(b"[1, 2, 3]")), 400, "not valid")
    assert_refused(join(client, sign(b"not json")), 400, "not valid")


@pytest.mark.parametrize(
    "data",
    [{}, {"jwt": ""}, {"jwt": "   "}, {"token": "x"}],
    ids=["no field", "empty", "blank", "wrong name"],
)
def test_missing_or_empty_jwt_field_is_refused(client, data):
    assert_refused(client.post("/openlearning/enrol", data=data), 400, "incomplete")


def test_get_on_the_enrolment_url_is_a_clear_405_page(client):
    response = client.get("/openlearning/enrol")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert title(response.text) == "Please start from your course page"
    assert "Join now" in response.text


@pytest.mark.parametrize(
    "overrides",
    [
        {"jti": DROP},
        {"jti": ""},
        {"jti": 12},
        {"jti": "x" * 191},
        {"sub": DROP},
        {"sub": ""},
        {"sub": {"id": LEARNER}},
        {"sub": "../admin"},
        {"title": DROP},
        {"title": "   "},
        {"currency": DROP},
        {"price": DROP},
        {"redirect_url": DROP},
        {"class": DROP},
        {"course": DROP},
        {"class": "a/b"},
        {"program": PROGRAM},
        {"class": DROP, "course": DROP},
    ],
    ids=lambda o: ",".join(f"{k}={'dropped' if v is DROP else repr(v)[:12]}" for k, v in o.items()),
)
def test_missing_or_malformed_claims_are_refused(client, overrides):
    assert_refused(join(client, sign(claims(**overrides))), 400, "incomplete")


def test_program_token_with_a_malformed_program_is_refused(client):
    assert_refused(join(client, sign(program_claims(program="../../x"))), 400, "incomplete")


@pytest.mark.parametrize(
    ("currency", "price"),
    [
        ("USD", "12.345"),
        ("JPY", "100.5"),
        ("JPY", 100.5),
        ("KWD", "1.2345"),
        ("USD", "-5"),
        ("USD", "abc"),
        ("USD", "NaN"),
        ("USD", True),
        ("USD", [1]),
        ("XYZ", "10"),
        ("usd dollars", "10"),
    ],
)
def test_price_that_cannot_be_charged_is_refused(client, currency, price):
    assert_refused(join(client, sign(claims(currency=currency, price=price))), 400, "cannot be")


@pytest.mark.parametrize(
    "redirect_url",
    [
        "https://evil.example/phish",
        "https://www.openlearning.com.evil.example/",
        "http://www.openlearning.com/unit-institution/courses/python-foundations/",
        "javascript:alert(1)",
        "//www.openlearning.com/x",
        "/relative/path",
    ],
)
def test_redirect_outside_the_allow_list_is_refused(client, redirect_url):
    response = join(client, sign(claims(redirect_url=redirect_url)))
    assert_refused(response, 400, "not valid")
    assert "address we do not recognise" in response.text


def test_refusals_are_json_for_clients_that_ask_for_json(client):
    response = client.post(
        "/openlearning/enrol", data={"jwt": "garbage"}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 400
    assert response.json["error"]["title"] == "This enrolment request is not valid"


def test_unconfigured_openlearning_is_a_503_page_and_the_app_still_starts(make_app):
    client = make_app().test_client()
    response = join(client, sign(claims()))
    assert response.status_code == 503
    assert "not set up" in response.text
    assert orders() == []


def test_post_without_a_token_is_a_400_even_when_openlearning_is_not_configured(make_app):
    client = make_app().test_client()
    assert_refused(client.post("/openlearning/enrol"), 400, "incomplete")


# --- the key-set URL ------------------------------------------------------------------------------


def jwks(*kids_and_keys) -> dict:
    return KeySet(
        [RSAKey.import_key(public_pem(key), {"kid": kid}) for kid, key in kids_and_keys]
    ).as_dict()


@pytest.fixture
def jwks_client(make_app):
    settings = {**OL_SETTINGS, "OPENLEARNING_PUBLIC_KEY": None, "OPENLEARNING_JWKS_URL": JWKS_URL}
    app = make_app(**settings)
    clock = [1000.0]
    app.extensions["portal"].platform("openlearning").verifier.keys.clock = lambda: clock[0]
    return app.test_client(), clock


def jwks_fetches(mocked) -> int:
    return sum(1 for c in mocked.calls if c.request.url == JWKS_URL)


def test_key_set_url_verifies_tokens_and_is_fetched_once(jwks_client, mocked):
    client, _clock = jwks_client
    mocked.get(JWKS_URL, json=jwks(("k1", RSA_KEY)))
    assert join(client, sign(claims(), kid="k1")).status_code == 200
    assert join(client, sign(claims(), kid="k1")).status_code == 200
    assert jwks_fetches(mocked) == 1
    # Two tokens, the same learner and class: the second shows the order the first opened.
    assert len(orders()) == 1
    assert len(used_tokens()) == 2


def test_unknown_kid_refreshes_the_key_set_for_a_rotated_key(jwks_client, mocked):
    client, clock = jwks_client
    mocked.get(JWKS_URL, json=jwks(("k1", RSA_KEY)))
    mocked.get(JWKS_URL, json=jwks(("k1", RSA_KEY), ("k2", OTHER_RSA_KEY)))
    assert join(client, sign(claims(), kid="k1")).status_code == 200
    clock[0] += 120
    response = join(client, sign(claims(), key=OTHER_RSA_KEY, kid="k2"))
    assert response.status_code == 200, response.text
    assert jwks_fetches(mocked) == 2


def test_unknown_kid_fetches_the_key_set_at_most_once_a_minute(jwks_client, mocked):
    client, clock = jwks_client
    mocked.get(JWKS_URL, json=jwks(("k1", RSA_KEY)))
    assert join(client, sign(claims(), kid="k1")).status_code == 200
    clock[0] += 61
    for _ in range(5):
        response = join(client, sign(claims(), key=OTHER_RSA_KEY, kid="unknown"))
        assert response.status_code == 401
        assert "could not verify" in title(response.text)
    assert jwks_fetches(mocked) == 2  # the first token's fetch, and one refresh for "unknown"
    clock[0] += 30
    join(client, sign(claims(), key=OTHER_RSA_KEY, kid="unknown"))
    assert jwks_fetches(mocked) == 2
    clock[0] += 31
    join(client, sign(claims(), key=OTHER_RSA_KEY, kid="unknown"))
    assert jwks_fetches(mocked) == 3
    assert len(orders()) == 1


def test_key_set_does_not_accept_hmac_even_with_a_symmetric_key_in_it(jwks_client, mocked):
    client, _clock = jwks_client
    secret = b"shared-secret-shared-secret-shared"
    mocked.get(
        JWKS_URL,
        json={
            "keys": [{"kty": "oct", "kid": "s1", "k": b64(secret)}, *jwks(("k1", RSA_KEY))["keys"]]
        },
    )
    response = join(client, sign(claims(), key=secret, alg="HS256", kid="s1"))
    assert response.status_code == 401
    assert orders() == []


def test_unreachable_key_set_is_a_503_that_charges_nothing(jwks_client, mocked):
    client, _clock = jwks_client
    mocked.get(JWKS_URL, json={"error": "down"}, status=500)
    response = join(client, sign(claims(), kid="k1"))
    assert response.status_code == 503
    assert "you have not been charged" in response.text
    assert orders() == []


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"OPENLEARNING_PUBLIC_KEY": "not a key"}, "PORTAL_OPENLEARNING_PUBLIC_KEY"),
        (
            {"OPENLEARNING_PUBLIC_KEY": public_pem(RSA_KEY).replace("A", "!", 3)},
            "PORTAL_OPENLEARNING_PUBLIC_KEY",
        ),
        (
            {
                "OPENLEARNING_PUBLIC_KEY": public_pem(
                    rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
                )
            },
            "PORTAL_OPENLEARNING_PUBLIC_KEY",
        ),
        (
            {"OPENLEARNING_PUBLIC_KEY": None, "OPENLEARNING_PUBLIC_KEY_FILE": "/nonexistent.pem"},
            "PORTAL_OPENLEARNING_PUBLIC_KEY_FILE",
        ),
        ({"OPENLEARNING_AUDIENCE": None}, "PORTAL_OPENLEARNING_AUDIENCE"),
        ({"OPENLEARNING_API_KEY": None}, "PORTAL_OPENLEARNING_API_KEY"),
        ({"OPENLEARNING_JWKS_URL": JWKS_URL}, "PORTAL_OPENLEARNING_JWKS_URL"),
        ({"OPENLEARNING_JWKS_URL": "not a url"}, "PORTAL_OPENLEARNING_JWKS_URL"),
    ],
    ids=[
        "garbage key",
        "corrupted key",
        "short RSA key",
        "missing key file",
        "no audience",
        "no API key",
        "two key sources",
        "malformed JWKS URL",
    ],
)
def test_bad_openlearning_settings_stop_the_app_naming_the_variable(make_app, overrides, variable):
    with pytest.raises(ConfigError, match=variable):
        make_app(**{**OL_SETTINGS, **overrides})


def test_public_key_file_is_used(make_app, tmp_path):
    path = tmp_path / "openlearning.pem"
    path.write_text(public_pem(RSA_KEY))
    settings = {**OL_SETTINGS, "OPENLEARNING_PUBLIC_KEY": None}
    client = make_app(**settings, OPENLEARNING_PUBLIC_KEY_FILE=str(path)).test_client()
    assert join(client, sign(claims())).status_code == 200


def test_public_key_pasted_on_one_line_is_accepted(make_app):
    one_line = public_pem(RSA_KEY).strip().replace("\n", "\\n")
    client = make_app(**{**OL_SETTINGS, "OPENLEARNING_PUBLIC_KEY": one_line}).test_client()
    assert join(client, sign(claims())).status_code == 200


def test_leeway_is_configurable(make_app):
    client = make_app(**OL_SETTINGS, OPENLEARNING_LEEWAY_SECONDS="0").test_client()
    response = join(client, sign(claims(exp=int(time.time()) - 5)))
    assert response.status_code == 401
    with db.reader() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 0


def test_used_token_ids_are_purged_once_their_tokens_cannot_be_accepted(app):
    from datetime import timedelta

    from portal.models import utcnow
    from portal.platforms.openlearning.jobs import run_purge_tokens

    now = utcnow()
    with db.transaction() as session:
        session.add_all(
            [
                # Expired two hours ago: past exp + leeway + the hour's margin.
                UsedToken(jti="old", issuer="openlearning", expires_at=now - timedelta(hours=2)),
                # Expired a minute ago: inside the margin, kept.
                UsedToken(
                    jti="recent", issuer="openlearning", expires_at=now - timedelta(minutes=1)
                ),
                UsedToken(jti="live", issuer="openlearning", expires_at=now + timedelta(minutes=5)),
            ]
        )
    with app.app_context():
        run_purge_tokens(app.extensions["portal"], None)
    assert sorted(token.jti for token in used_tokens()) == ["live", "recent"]


def learner_draft(jti: str, key: str = "k" * 64):
    from portal.checkout import OrderDraft

    return OrderDraft(
        platform="openlearning",
        platform_ref=jti,
        learner_key=key,
        description="Python foundations",
        currency="AUD",
        amount_minor=4900,
    )


def test_two_join_now_at_once_make_one_order(app, monkeypatch):
    """The second post looked before the first one's order was committed: the database's unique
    index on the learner's payable order refuses the second insert, and it shows the first."""
    from portal import checkout
    from portal import orders as store

    first = checkout.open_order(learner_draft("jti-1"))
    real = store.find_for_learner
    looks = []

    def raced(platform, key):
        looks.append(key)
        return None if len(looks) == 1 else real(platform, key)

    monkeypatch.setattr(store, "find_for_learner", raced)
    second = checkout.open_order(learner_draft("jti-2"))
    assert second.id == first.id
    assert len(looks) == 2
    assert len(orders()) == 1


def test_a_new_join_now_after_a_cancelled_order_is_a_new_purchase(app):
    from sqlalchemy import update

    from portal import checkout

    first = checkout.open_order(learner_draft("jti-1"))
    with db.transaction() as session:
        session.execute(
            update(Order).where(Order.id == first.id).values(state=OrderState.CANCELLED)
        )
    second = checkout.open_order(learner_draft("jti-2"))
    assert second.id != first.id
    assert second.state == OrderState.OPEN
    other = checkout.open_order(learner_draft("jti-3", key="z" * 64))
    assert other.id not in {first.id, second.id}


# --- Post/Redirect/Get: Back from Stripe never resubmits the form -----------------------------


def test_every_answer_to_the_enrol_post_is_a_303_to_a_page_the_browser_gets(
    client, mocked, checkout_session
):
    token = sign(claims())
    first = client.post("/openlearning/enrol", data={"jwt": token})
    reference = order_row().reference
    assert first.status_code == 303
    assert first.headers["Location"].endswith(f"/orders/{reference}")
    assert b"Review your order" not in first.data
    # The same token again, and a new token for the same purchase: the same order's page.
    again = client.post("/openlearning/enrol", data={"jwt": token})
    assert again.status_code == 303
    assert again.headers["Location"].endswith(f"/orders/{reference}")
    other = client.post("/openlearning/enrol", data={"jwt": sign(claims(jti="jti-other"))})
    assert other.status_code == 303
    assert other.headers["Location"].endswith(f"/orders/{reference}")
    # The GET is the review page (and stays so however often it is loaded: Back, reload).
    for _ in range(2):
        review = client.get(first.headers["Location"])
        assert review.status_code == 200
        assert title(review.text) == "Review your order"
    # Paid and enrolled: the POST sends the learner to the "already enrolled" GET page.
    class_enrolment_answers(mocked, ENROLLED)
    pay(client, mocked, review.text, checkout_session)
    come_back_paid(client, mocked, checkout_session)
    enrolled = client.post("/openlearning/enrol", data={"jwt": token})
    assert enrolled.status_code == 303
    assert enrolled.headers["Location"].endswith(f"/openlearning/orders/{reference}/enrolled")
    page = client.get(enrolled.headers["Location"])
    assert page.status_code == 200
    assert title(page.text) == "You’re already enrolled"


def test_enrolled_page_of_an_unpaid_order_sends_to_its_review_and_unknown_is_404(client):
    client.post("/openlearning/enrol", data={"jwt": sign(claims())})
    reference = order_row().reference
    unpaid = client.get(f"/openlearning/orders/{reference}/enrolled")
    assert unpaid.status_code == 303
    assert unpaid.headers["Location"].endswith(f"/orders/{reference}")
    assert client.get("/openlearning/orders/ord_doesnotexist123/enrolled").status_code == 404
    assert client.get("/openlearning/orders/not-a-reference/enrolled").status_code == 404


# --- error pages link to the course page when the token says where it is ----------------------


def back_link(html: str) -> tuple[str, str] | None:
    found = re.search(r'<a class="button secondary" href="([^"]+)">([^<]+)</a>', html)
    return (found.group(1), found.group(2)) if found else None


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"exp": int(time.time()) - 3600}, id="expired"),
        pytest.param({"aud": "another-institution"}, id="wrong-audience"),
        pytest.param({"price": "-1"}, id="bad-price"),
    ],
)
def test_refused_genuine_token_links_back_to_its_course_page(client, overrides):
    page = client.post("/openlearning/enrol", data={"jwt": sign(claims(**overrides))})
    assert 400 <= page.status_code < 500
    assert back_link(page.text) == (COURSE_URL, "Back to openlearning.com")


def test_used_token_links_back_to_its_course_page(client):
    token_claims = claims()
    with db.transaction() as session:  # spent, on no order the portal could show instead
        session.add(
            UsedToken(
                jti=token_claims["jti"],
                issuer="openlearning",
                order_id=None,
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
    page = client.post("/openlearning/enrol", data={"jwt": sign(token_claims)})
    assert page.status_code == 400
    assert title(page.text) == "This enrolment request was already used"
    assert back_link(page.text) == (COURSE_URL, "Back to openlearning.com")


def test_forged_or_off_list_course_page_is_never_linked(make_app):
    client = make_app(**OL_SETTINGS, BRAND_HOME_URL="https://brand.test/").test_client()
    forged = sign(claims(exp=int(time.time()) - 3600), key=OTHER_RSA_KEY)
    page = client.post("/openlearning/enrol", data={"jwt": forged})
    assert back_link(page.text) == ("https://brand.test", "Back to brand.test")
    elsewhere = sign(claims(exp=int(time.time()) - 3600, redirect_url="https://evil.test/x"))
    page = client.post("/openlearning/enrol", data={"jwt": elsewhere})
    assert back_link(page.text) == ("https://brand.test", "Back to brand.test")
