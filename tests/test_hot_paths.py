"""What the hot paths keep and skip for speed, and that none of it changes what a learner or an
operator sees: brands and overrides kept per process for a few seconds, rendered pages kept with
each learner's own CSRF token put in, reads in autocommit on PostgreSQL, pooled connections
pinged only after being idle, and requests reading the environment once."""

from __future__ import annotations

import re
import time

import pytest
from flask import session as flask_session
from flask_wtf.csrf import validate_csrf
from sqlalchemy import event, select, text, update

from portal import http
from portal.admin.audit import Actor
from portal.branding import cache as branding_cache
from portal.branding import overrides
from portal.branding.brands import DEFAULT_COLOURS, BrandInput
from portal.branding.operations import save_brand
from portal.db import db, make_engine
from portal.models import Brand, Order, OrderState, TemplateOverride
from tests.admin_support import make_order

ACTOR = Actor(None, "marketer@example.com")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def brand_input(**fields) -> BrandInput:
    return BrandInput(**{"name": "Acme Academy", **DEFAULT_COLOURS, **fields})


def assert_token_is_valid(app, client, token: str) -> None:
    """The token in the page belongs to this client's session (Flask-WTF's own check)."""
    with client.session_transaction() as stored:
        data = dict(stored)
    with app.test_request_context():
        flask_session.update(data)
        validate_csrf(token)  # raises ValidationError otherwise


# --- rendered pages -------------------------------------------------------------------------


def test_a_kept_page_carries_each_learners_own_csrf_token(app):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    first, second = app.test_client(), app.test_client()
    page_one = first.get(f"/orders/{order.reference}").text
    page_two = second.get(f"/orders/{order.reference}").text
    with app.app_context():
        assert len(branding_cache.pages()) == 1  # the second learner was served the kept page
    token_one, token_two = CSRF.search(page_one).group(1), CSRF.search(page_two).group(1)
    assert token_one != token_two
    assert_token_is_valid(app, first, token_one)
    assert_token_is_valid(app, second, token_two)
    assert page_one.replace(token_one, "T") == page_two.replace(token_two, "T")
    assert branding_cache_mark() not in page_one + page_two


def test_a_learner_back_on_a_page_gets_a_valid_token_and_the_earlier_one_still_works(app):
    """Each page carries a token signed for this learner's session (Flask-WTF's generate_csrf);
    another learner's differs, and a token from an earlier page stays good within
    WTF_CSRF_TIME_LIMIT."""
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    learner, other = app.test_client(), app.test_client()
    first = CSRF.search(learner.get(f"/orders/{order.reference}").text).group(1)
    time.sleep(1.1)  # itsdangerous signs with whole seconds
    again = CSRF.search(learner.get(f"/orders/{order.reference}").text).group(1)
    theirs = CSRF.search(other.get(f"/orders/{order.reference}").text).group(1)
    assert theirs not in {first, again}
    assert_token_is_valid(app, learner, first)
    assert_token_is_valid(app, learner, again)
    assert_token_is_valid(app, other, theirs)
    cancelled = learner.post(f"/orders/{order.reference}/cancel", data={"csrf_token": first})
    assert cancelled.status_code == 303  # the earlier signature is still good


def test_sessions_signed_with_a_rotated_key_are_read_and_a_new_key_is_used(make_app):
    """A new SECRET_KEY (with the old one in SECRET_KEY_FALLBACKS, Flask's own setting) still
    reads existing session cookies, and the form tokens signed after it work."""
    app = make_app()
    client = app.test_client()
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    token = CSRF.search(client.get(f"/orders/{order.reference}").text).group(1)
    app.config["SECRET_KEY_FALLBACKS"] = [app.secret_key]
    app.secret_key = "a-new-secret-key-for-the-rotation"
    assert CSRF.search(client.get(f"/orders/{order.reference}").text).group(1)
    with client.session_transaction() as stored:
        assert stored.get("csrf_token")  # the old cookie was read with the fallback key
    answer = client.post(
        f"/orders/{order.reference}/cancel",
        data={"csrf_token": CSRF.search(client.get(f"/orders/{order.reference}").text).group(1)},
    )
    assert answer.status_code == 303
    assert token


def branding_cache_mark() -> str:
    from portal.branding.render import CSRF_MARK

    return CSRF_MARK


def test_a_change_to_the_order_renders_afresh(app):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = app.test_client()
    assert "Introduction to Python" in client.get(f"/orders/{order.reference}").text
    with db.transaction() as session:
        session.execute(
            update(Order).where(Order.id == order.id).values(description="Advanced Python")
        )
    page = client.get(f"/orders/{order.reference}").text
    assert "Advanced Python" in page
    assert "Introduction to Python" not in page


def test_a_published_override_shows_on_the_next_page(app):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = app.test_client()
    client.get(f"/orders/{order.reference}")
    source = '{% extends "default:review.html" %}{% block title %}Kept-page check{% endblock %}'
    with app.test_request_context():
        row = overrides.save_draft(ACTOR, "review.html", source, None)
        overrides.publish(ACTOR, "review.html", row.version)
    assert "<title>Kept-page check ·" in client.get(f"/orders/{order.reference}").text
    with app.test_request_context():
        overrides.use_default(ACTOR, "review.html")
    assert "Kept-page check" not in client.get(f"/orders/{order.reference}").text


def test_an_override_that_changes_the_token_still_gets_a_working_form(app):
    # The kept page has a mark where the token goes; an override that transforms the token
    # (here, into its length in the title) is not kept, and renders with the real token.
    source = (
        '{% extends "default:review.html" %}'
        "{% block title %}{{ csrf_token()|upper|length }} characters{% endblock %}"
    )
    with app.test_request_context():
        row = overrides.save_draft(ACTOR, "review.html", source, None)
        overrides.publish(ACTOR, "review.html", row.version)
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = app.test_client()
    page = client.get(f"/orders/{order.reference}").text
    token = CSRF.search(page).group(1)
    assert_token_is_valid(app, client, token)
    assert f"<title>{len(token)} characters ·" in page
    with app.app_context():
        assert len(branding_cache.pages()) == 0


def test_no_pages_are_kept_when_the_cache_is_off(make_app):
    app = make_app(BRANDING_CACHE_SECONDS="0")
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = app.test_client()
    assert client.get(f"/orders/{order.reference}").status_code == 200
    with app.app_context():
        assert branding_cache.pages() is None


# --- brands and overrides kept per process --------------------------------------------------


def test_a_brand_saved_here_shows_at_once(app):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = app.test_client()
    save_brand(ACTOR, brand_input(name="First Name Academy", is_default=True))
    assert "First Name Academy" in client.get(f"/orders/{order.reference}").text
    brand_id = db_scalar(select(Brand.id))
    save_brand(ACTOR, brand_input(name="Second Name Academy", is_default=True), brand_id)
    assert "Second Name Academy" in client.get(f"/orders/{order.reference}").text


def db_scalar(query):
    with db.reader() as session:
        return session.scalar(query)


def test_a_brand_changed_by_another_host_shows_within_the_cache_time(app, monkeypatch):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = app.test_client()
    save_brand(ACTOR, brand_input(name="Old Name Academy", is_default=True))
    assert "Old Name Academy" in client.get(f"/orders/{order.reference}").text
    # Another host writes the row: this process is not told.
    with db.transaction() as session:
        session.execute(update(Brand).values(name="New Name Academy", version=Brand.version + 1))
    assert "Old Name Academy" in client.get(f"/orders/{order.reference}").text
    now = time.monotonic()
    monkeypatch.setattr(branding_cache.time, "monotonic", lambda: now + 5.1)
    assert "New Name Academy" in client.get(f"/orders/{order.reference}").text


def test_an_override_published_by_another_host_shows_within_the_cache_time(app, monkeypatch):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = app.test_client()
    client.get(f"/orders/{order.reference}")
    with db.transaction() as session:
        session.add(
            TemplateOverride(
                template_name="review.html",
                version=1,
                source='{% extends "default:review.html" %}{% block title %}Elsewhere'
                "{% endblock %}",
                author="x",
                published=True,
            )
        )
    assert "<title>Elsewhere ·" not in client.get(f"/orders/{order.reference}").text
    now = time.monotonic()
    monkeypatch.setattr(branding_cache.time, "monotonic", lambda: now + 5.1)
    assert "<title>Elsewhere ·" in client.get(f"/orders/{order.reference}").text


def test_a_failed_lookup_is_not_kept():
    cache = branding_cache.TimedCache(60)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database down")
        return "brand"

    with pytest.raises(RuntimeError):
        cache.get("key", flaky)
    assert cache.get("key", flaky) == "brand"
    assert cache.get("key", flaky) == "brand"
    assert len(calls) == 2


def test_the_rendered_pages_keep_only_the_newest():
    pages = branding_cache.RenderedPages(size=2)
    pages.put(b"a", "A")
    pages.put(b"b", "B")
    assert pages.get(b"a") == "A"  # now the newest
    pages.put(b"c", "C")
    assert pages.get(b"b") is None
    assert (pages.get(b"a"), pages.get(b"c"), len(pages)) == ("A", "C", 2)


# --- orders kept by row version (PostgreSQL) -------------------------------------------------
#
# These are the pages without the order change listener (PORTAL_ORDER_CHANGE_LISTENER=0, or
# while it connects or cannot hear): each page asks for the row's version. With the listener,
# tests/test_order_changes.py.


@pytest.fixture
def versions_app(make_app):
    return make_app(ORDER_CHANGE_LISTENER=False)


def kept_orders(app):
    from portal.orders.cache import EXTENSION

    return app.extensions[EXTENSION]


def postgres_only(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("the row version (xmin) is PostgreSQL's; SQLite loads the row every time")


def statements_sent(engine) -> list[str]:
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


def test_an_unchanged_order_is_not_loaded_again(versions_app, database_url):
    postgres_only(database_url)
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = versions_app.test_client()
    first = client.get(f"/orders/{order.reference}")
    assert first.status_code == 200
    assert len(kept_orders(versions_app)) == 1
    sent = statements_sent(db.engine)
    again = client.get(f"/orders/{order.reference}")
    assert again.status_code == 200
    assert len(sent) == 1  # only the row's version was asked for
    assert "xmin" in sent[0]
    assert "description" not in sent[0]
    token = CSRF.search(again.text).group(1)
    assert first.text.replace(CSRF.search(first.text).group(1), "T") == again.text.replace(
        token, "T"
    )
    assert_token_is_valid(versions_app, client, token)


def test_each_page_gets_an_order_of_its_own(versions_app, database_url):
    """The kept columns are immutable and every page makes its own Order from them: a change
    to one page's object reaches no other request."""
    postgres_only(database_url)
    from portal import orders

    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    with versions_app.test_request_context():
        one = orders.view(order.reference)
        two = orders.view(order.reference)
        assert one is not two
        one.description = "changed in one request"
        assert two.description == "Introduction to Python"
        assert orders.view(order.reference).description == "Introduction to Python"
        kept = kept_orders(versions_app).get(order.reference, two.row_version)
        with pytest.raises(TypeError):
            kept["description"] = "changed"


def test_a_change_made_elsewhere_shows_on_the_next_page(versions_app, database_url):
    """Another host, or an operator at a psql prompt, changes the row with plain SQL (no
    updated_at, no ORM): its new row version means the page reads it again at once."""
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = versions_app.test_client()
    assert "Introduction to Python" in client.get(f"/orders/{order.reference}").text
    other_host = make_engine(database_url)
    try:
        with other_host.begin() as connection:
            connection.execute(
                text("UPDATE orders SET description = 'Advanced Python' WHERE id = :id"),
                {"id": order.id},
            )
        page = client.get(f"/orders/{order.reference}").text
        assert "Advanced Python" in page
        assert "Introduction to Python" not in page
        with other_host.begin() as connection:
            connection.execute(
                text("UPDATE orders SET state = 'paid' WHERE id = :id"), {"id": order.id}
            )
        paid = client.get(f"/orders/{order.reference}")
        assert paid.status_code == 303
        assert paid.headers["Location"].endswith(f"/orders/{order.reference}/status")
    finally:
        other_host.dispose()


def test_an_unknown_reference_is_still_a_404(versions_app, database_url):
    answer = versions_app.test_client().get("/orders/ord_doesnotexist0000")
    assert answer.status_code == 404
    assert len(kept_orders(versions_app)) == 0


def test_a_kept_order_is_used_only_for_its_own_version():
    from portal.orders.cache import KeptOrders

    kept = KeptOrders(size=2)
    first, second, third = {"description": "1"}, {"description": "2"}, {"description": "3"}
    kept.put("ord_a", "100", first)
    assert kept.get("ord_a", "100") is first
    assert kept.get("ord_a", "101") is None  # the row has changed since
    assert kept.get("ord_a", "100") is None  # and the old copy is gone
    kept.put("ord_a", "1", first)
    kept.put("ord_b", "1", second)
    kept.get("ord_a", "1")
    kept.put("ord_c", "1", third)  # the least recently shown goes
    assert (kept.get("ord_b", "1"), kept.get("ord_a", "1"), kept.get("ord_c", "1")) == (
        None,
        first,
        third,
    )
    old = KeptOrders(max_age=0.01)
    old.put("ord_a", "1", first)
    time.sleep(0.02)
    assert old.get("ord_a", "1") is None


# --- the database ---------------------------------------------------------------------------


def test_reads_leave_no_transaction_open_on_postgresql(app, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("autocommit reads are a PostgreSQL matter")
    with db.reader() as session:
        session.execute(text("SELECT 1"))
        status = session.connection().connection.dbapi_connection.info.transaction_status.name
    assert status == "IDLE"  # not INTRANS: no BEGIN was sent, so no ROLLBACK is needed


def test_a_single_write_commits_as_it_runs(app, database_url):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    from portal.orders import timeline

    timeline.record(order.id, "note", "kept without a transaction of its own")
    with db.reader() as session:
        messages = session.scalars(text("SELECT message FROM order_events")).all()
    assert "kept without a transaction of its own" in messages


def test_an_event_recorded_in_a_transaction_goes_with_it(app):
    """timeline.record sends its INSERT at once (no unit of work), but inside a transaction it
    still commits or rolls back with the state change it describes."""
    from portal.orders import timeline

    order = make_order(state=OrderState.OPEN, stripe_session_id=None)

    def fails_after_recording():
        with db.transaction() as session:
            session.execute(update(Order).where(Order.id == order.id).values(state="paying"))
            timeline.record(order.id, "state", "-> paying (rolled back)", session=session)
            raise RuntimeError("the transaction fails after the event was sent")

    with pytest.raises(RuntimeError):
        fails_after_recording()
    with db.transaction() as session:
        session.execute(update(Order).where(Order.id == order.id).values(state="paying"))
        timeline.record(order.id, "state", "-> paying", {"to": "paying"}, session=session)
    with db.reader() as session:
        events = session.execute(
            text("SELECT message, detail FROM order_events WHERE order_id = :id ORDER BY id"),
            {"id": order.id},
        ).all()
        state = session.scalar(select(Order.state).where(Order.id == order.id))
    messages = [message for message, _detail in events]
    assert "-> paying (rolled back)" not in messages
    assert "-> paying" in messages
    assert state == "paying"


def test_statements_run_in_autocommit_and_hand_the_connection_back_as_it_was(postgres_url):
    """db.statements() switches its pooled connection to autocommit for the block and back on
    its return, so the next `transaction()` on the same connection is one transaction again."""
    if postgres_url is None:
        pytest.skip("PORTAL_TEST_DATABASE_URL is not set")
    from portal.db import Database

    database = Database()
    database.configure(postgres_url, pool_size=1)  # one connection: every block gets the same
    try:
        with database.statements() as connection:
            connection.execute(text("CREATE TEMP TABLE kept (n int)"))
            raw = connection.connection.dbapi_connection
            assert raw.autocommit is True
            connection.execute(text("INSERT INTO kept VALUES (1)"))
            assert raw.info.transaction_status.name == "IDLE"  # committed as it ran
        seen = {}

        def fails_after_inserting():
            with database.transaction() as session:
                seen["same"] = session.connection().connection.dbapi_connection is raw
                seen["autocommit"] = raw.autocommit
                session.execute(text("INSERT INTO kept VALUES (2)"))
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            fails_after_inserting()
        assert seen == {"same": True, "autocommit": False}
        with database.statements() as connection:
            assert connection.execute(text("SELECT array_agg(n) FROM kept")).scalar() == [1]
    finally:
        database.dispose()


@pytest.mark.parametrize(("idle_for", "survives"), [(11.0, True), (2.0, False)])
def test_a_pooled_connection_is_pinged_after_being_idle(
    postgres_url, monkeypatch, idle_for, survives
):
    """After IDLE_PING_SECONDS in the pool a dead connection is found and replaced before use; a
    connection in steady use is not pinged (a dead one then fails its statement, and the pool
    throws it away, as SQLAlchemy does for any disconnect)."""
    if postgres_url is None:
        pytest.skip("PORTAL_TEST_DATABASE_URL is not set")
    from sqlalchemy.exc import DBAPIError

    import portal.db

    engine = make_engine(postgres_url, pool_size=1)
    admin = make_engine(postgres_url, pool_size=1)
    try:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        time.sleep(0.2)
        now = time.monotonic()
        monkeypatch.setattr(portal.db.time, "monotonic", lambda: now + idle_for)
        if survives:
            with engine.connect() as connection:
                assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != pid
        else:
            with pytest.raises(DBAPIError), engine.connect() as connection:
                connection.execute(text("SELECT pg_backend_pid()"))
    finally:
        engine.dispose()
        admin.dispose()


# --- upstream HTTP sessions -----------------------------------------------------------------


def test_without_a_proxy_the_environment_is_read_once(monkeypatch):
    for name in list(__import__("os").environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    session = http.new_session(2)
    assert session.trust_env is False
    assert session.verify == "/etc/ssl/certs/ca-certificates.crt"


def test_with_a_proxy_requests_works_it_out_per_call(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    session = http.new_session(2)
    assert session.trust_env is True


def test_find_order_gives_the_same_order_as_the_orm_load(app):
    """Entry pages look up the purchase's order (orders.find): every column as an ORM session
    loads it, and None for a purchase without one."""
    from portal import orders

    made = make_order(state=OrderState.OPEN, stripe_session_id=None)
    with db.reader() as session:
        loaded = session.get(Order, made.id)
    found = orders.find(made.platform, made.platform_ref)
    columns = [column.key for column in Order.__table__.columns]
    assert {name: getattr(found, name) for name in columns} == {
        name: getattr(loaded, name) for name in columns
    }
    assert orders.find(made.platform, "no-such-purchase") is None
    assert orders.find("openlearning", made.platform_ref) is None  # another platform's
