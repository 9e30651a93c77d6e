"""portal.signing: the session cookie and the form token signed with keys derived once per
process and small payloads left uncompressed, read and written exactly as stock Flask, Flask-WTF
and itsdangerous read and write them, so cookies and forms made before a deploy still work after
it, and the other way round."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

import pytest
from flask import session as flask_session
from flask.sessions import SecureCookieSessionInterface, session_json_serializer
from flask_wtf.csrf import validate_csrf
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from markupsafe import Markup
from wtforms import ValidationError

from portal import signing
from portal.models import OrderState
from tests.admin_support import make_order

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SMALL = {"csrf_token": "0123456789abcdef0123456789abcdef01234567"}
LARGE = {"csrf_token": "f" * 40, "notes": ["the same words again and again"] * 20}


def stock_session_serializer(app):
    """The serializer Flask itself would use for this app's session cookie."""
    return SecureCookieSessionInterface().get_signing_serializer(app)


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "large"])
def test_session_cookies_are_read_both_ways_with_stock_flask(app, data):
    ours = app.session_interface.get_signing_serializer(app)
    stock = stock_session_serializer(app)
    assert isinstance(ours, signing.TokenSerializer)
    assert stock.loads(ours.dumps(data)) == data
    assert ours.loads(stock.dumps(data)) == data


def test_small_payloads_are_not_compressed_and_large_ones_are_as_before(app):
    ours = app.session_interface.get_signing_serializer(app)
    stock = stock_session_serializer(app)
    assert not ours.dumps(SMALL).startswith(".")
    assert ours.dumps(LARGE).startswith(".")  # compressed, as itsdangerous would
    assert stock.dumps(LARGE).startswith(".")


def test_a_cookie_signed_with_another_key_is_refused(app):
    """Keys are kept per secret: a cookie signed under one secret never passes under another."""
    ours = app.session_interface.get_signing_serializer(app)
    forged = URLSafeTimedSerializer(
        "not-the-secret-key",
        salt="cookie-session",
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
    ).dumps(SMALL)
    with pytest.raises(BadSignature):
        ours.loads(forged)
    other = signing.TokenSerializer("not-the-secret-key", salt="cookie-session")
    assert other.loads(other.dumps(SMALL)) == SMALL
    with pytest.raises(BadSignature):
        ours.loads(other.dumps(SMALL))


def test_form_tokens_signed_here_pass_flask_wtf_and_stock_tokens_pass_here(app):
    raw = signing.new_raw_form_token()
    key = app.config.get("WTF_CSRF_SECRET_KEY") or app.secret_key
    token = signing.form_token_serializer(key).dumps(raw)
    stock = URLSafeTimedSerializer(key, salt="wtf-csrf-token").dumps(raw)
    with app.test_request_context():
        flask_session["csrf_token"] = raw
        validate_csrf(token)
        validate_csrf(stock)
        assert signing.form_token_serializer(key).loads(stock) == raw
    with app.test_request_context():
        flask_session["csrf_token"] = signing.new_raw_form_token()  # another learner's session
        with pytest.raises(ValidationError):
            validate_csrf(token)


def test_a_new_learners_page_sets_a_cookie_stock_flask_reads(app):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    learner = app.test_client()
    page = learner.get(f"/orders/{order.reference}")
    token = CSRF.search(page.text).group(1)
    cookie = learner.get_cookie(app.config["SESSION_COOKIE_NAME"])
    assert cookie is not None
    stored = stock_session_serializer(app).loads(cookie.value)
    with app.test_request_context():
        flask_session.update(stored)
        validate_csrf(token)
    answer = learner.post(f"/orders/{order.reference}/cancel", data={"csrf_token": token})
    assert answer.status_code == 303


def test_a_cookie_from_before_the_deploy_still_carries_the_learner_through(app):
    """A learner whose review page came from stock Flask and Flask-WTF pays after the deploy."""
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    raw = signing.new_raw_form_token()
    cookie = stock_session_serializer(app).dumps({"csrf_token": raw})
    token = URLSafeTimedSerializer(app.secret_key, salt="wtf-csrf-token").dumps(raw)
    learner = app.test_client()
    learner.set_cookie(app.config["SESSION_COOKIE_NAME"], cookie)
    answer = learner.post(f"/orders/{order.reference}/cancel", data={"csrf_token": token})
    assert answer.status_code == 303
    page = learner.get(f"/orders/{order.reference}")  # cancelled now: the status page
    assert page.status_code in {200, 303}


# Sessions of every shape the session cookie may hold: plain strings (a learner's), the tagged
# kinds Flask's serializer keeps (tuples in flashed messages, bytes, Markup, datetimes), keys that
# look like Flask's own tags, non-ASCII text, an empty session.
SESSION_SHAPES = [
    {"csrf_token": "0123456789abcdef0123456789abcdef01234567"},
    {"csrf_token": "f" * 40, "admin_user": "ops@example.com", "next": "/admin/orders"},
    {"_flashes": [("message", "Brand saved")], "csrf_token": "a" * 40},
    {" t": "looks like a tag"},
    {" di": "the dict tag's own key"},
    {" t": "a tag key among others", "csrf_token": "b" * 40},
    {"name": "Zoë Ünal — 日本", "csrf_token": "c" * 40},
    {"count": 3, "flag": True, "nothing": None},
    {"blob": b"\x00\x01", "when": datetime(2026, 12, 5, 12, 0, tzinfo=UTC)},
    {"markup": Markup("<b>bold</b>")},
    {"nested": {"a": "b"}},
]


@pytest.mark.parametrize("data", SESSION_SHAPES)
def test_the_session_json_is_flasks_own_text(app, data):
    """portal.SessionJSON writes a session of plain strings without tagging it: the text must be
    exactly what Flask's tagged serializer writes, and read back by it as it was."""
    with app.app_context():
        ours = app.session_interface.serializer.dumps(data)
        assert ours == session_json_serializer.dumps(data)
        assert session_json_serializer.loads(ours) == data


def saved_headers(app, interface, data, *, modified: bool, accessed: bool, vary=None):
    """The headers `interface.save_session` leaves on a response for a session holding `data`."""
    with app.test_request_context("/orders/ord_0123456789"):
        stored = interface.session_class(data)
        stored.modified, stored.accessed = modified, accessed
        response = app.response_class("page")
        if vary is not None:
            response.headers["Vary"] = vary
        interface.save_session(app, stored, response)
    return sorted((name, value) for name, value in response.headers if name != "Content-Length")


@pytest.mark.parametrize("data", [SMALL, LARGE, {}], ids=["small", "large", "empty"])
@pytest.mark.parametrize("modified", [True, False])
@pytest.mark.parametrize("accessed", [True, False])
@pytest.mark.parametrize("vary", [None, "Accept-Language", "accept-language, cookie"])
@pytest.mark.parametrize("permanent", [False, True])
def test_saving_a_session_sets_the_headers_stock_flask_sets(
    app, monkeypatch, data, modified, accessed, vary, permanent
):
    """The portal's save_session takes shortcuts; the Set-Cookie and Vary it leaves (or the
    deleted cookie for an emptied session) are the same as Flask's, byte for byte. The clock is
    held still so that both sign with the same timestamp and expiry."""
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: 1796472000)
    expires = datetime(2027, 1, 4, 12, 0, tzinfo=UTC) if permanent else None
    monkeypatch.setattr(
        SecureCookieSessionInterface, "get_expiration_time", lambda self, app, session: expires
    )
    data = {**data, "_permanent": True} if permanent and data else data
    stock = SecureCookieSessionInterface()
    stock.get_signing_serializer = app.session_interface.get_signing_serializer  # same signer
    shape = {"modified": modified, "accessed": accessed, "vary": vary}
    ours = saved_headers(app, app.session_interface, data, **shape)
    assert ours == saved_headers(app, stock, data, **shape)
    if data and (modified or permanent):
        assert any(name == "Set-Cookie" for name, _value in ours)
