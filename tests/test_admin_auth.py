"""Signing in to the operator console: passwords, lockout, sessions and their timeouts, roles on
every route, the create-user command, and the audit of it all."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from portal.admin import auth
from portal.admin.audit import Actor
from portal.admin.auth import SESSION_SEEN, SESSION_STARTED, hash_password, verify_password
from portal.branding.brands import DEFAULT_COLOURS, BrandInput
from portal.branding.operations import save_brand
from portal.db import db
from portal.models import LoginAttempt, User, WebhookDelivery, utcnow
from tests.admin_support import (
    PASSWORD,
    audit_entries,
    csrf,
    make_order,
    make_user,
    sign_in,
)
from tests.api_support import make_key

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing


def user(email: str) -> User:
    with db.reader() as session:
        return session.scalar(select(User).where(User.email == email))


# --- passwords ---------------------------------------------------------------------------------


def test_passwords_are_stored_as_salted_scrypt():
    stored = hash_password(PASSWORD)
    assert stored.startswith("scrypt:32768:8:1$")  # werkzeug.security's format
    assert PASSWORD not in stored
    assert hash_password(PASSWORD) != stored  # a fresh salt each time
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, PASSWORD + "x")
    assert not verify_password("sha256$abc", PASSWORD)
    assert not verify_password("nonsense:1:2$salt$hash", PASSWORD)
    assert not verify_password("", PASSWORD)
    assert not verify_password(None, PASSWORD)


def test_a_weaker_stored_hash_is_upgraded_at_sign_in(app, fast_hashing):
    make_user("ops@example.com", "operator")
    weak = user("ops@example.com").password_hash
    assert weak.startswith("scrypt:1024:8:1$")
    auth.SCRYPT_N = 2**11  # the deployment raised the cost (monkeypatch restores it)
    response = sign_in(app.test_client(), "ops@example.com")
    assert response.status_code == 303
    assert user("ops@example.com").password_hash.startswith("scrypt:2048:8:1$")


def legacy_hash(password: str, n: int = 2**10, r: int = 8, p: int = 1) -> str:
    """A hash as the console wrote them before werkzeug.security: `scrypt$n$r$p$salt$hash`."""
    import base64
    import hashlib
    import os

    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return (
        f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


def test_a_hash_in_the_old_format_still_signs_in_and_is_rehashed(app, fast_hashing):
    old = legacy_hash(PASSWORD)
    assert verify_password(old, PASSWORD)
    assert not verify_password(old, PASSWORD + "x")
    assert not verify_password(old[:-8] + "AAAAAAA=", PASSWORD)  # another digest
    make_user("ops@example.com", "operator")
    with db.transaction() as session:
        session.execute(
            update(User).where(User.email == "ops@example.com").values(password_hash=old)
        )
    refused = sign_in(app.test_client(), "ops@example.com", PASSWORD + "x")
    assert refused.status_code != 303
    assert user("ops@example.com").password_hash == old  # a wrong password rehashes nothing
    response = sign_in(app.test_client(), "ops@example.com")
    assert response.status_code == 303
    rehashed = user("ops@example.com").password_hash
    assert rehashed.startswith("scrypt:1024:8:1$")
    assert verify_password(rehashed, PASSWORD)
    assert sign_in(app.test_client(), "ops@example.com").status_code == 303


# --- signing in --------------------------------------------------------------------------------


def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = client.get("/admin/orders?state=paid")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login?next=/admin/orders?state%3Dpaid"
    page = client.get(response.headers["Location"])
    assert page.status_code == 200
    assert "Sign in to the console" in page.text
    assert 'name="csrf_token"' in page.text


def test_sign_in_then_back_to_the_page_asked_for(app, fast_hashing):
    make_user("ops@example.com", "operator")
    client = app.test_client()
    page = client.get("/admin/login?next=/admin/orders")
    response = client.post(
        "/admin/login?next=/admin/orders",
        data={"csrf_token": csrf(page.text), "email": " OPS@example.com ", "password": PASSWORD},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/orders"
    assert client.get("/admin/orders").status_code == 200


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/admin", "/orders/x", "/admin\\@evil"]
)
def test_next_never_leaves_the_console(app, fast_hashing, target):
    make_user("ops@example.com", "operator")
    client = app.test_client()
    page = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        query_string={"next": target},
        data={"csrf_token": csrf(page.text), "email": "ops@example.com", "password": PASSWORD},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/"


def test_a_wrong_password_is_refused_and_audited(app, fast_hashing):
    make_user("ops@example.com", "operator")
    client = app.test_client()
    response = sign_in(client, "ops@example.com", "wrong password!", REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 401
    assert "do not match an active account" in response.text
    assert client.get("/admin/dashboard").status_code == 302
    entry = audit_entries("login")[-1]
    assert (entry.actor, entry.outcome) == ("ops@example.com", "failed")
    assert entry.ip_address == "198.51.100.7"
    assert entry.detail["reason"] == "wrong email or password"


def test_an_unknown_account_reads_the_same_as_a_wrong_password(app, fast_hashing):
    make_user("ops@example.com", "operator")
    unknown = sign_in(app.test_client(), "nobody@example.com", PASSWORD)
    wrong = sign_in(app.test_client(), "ops@example.com", "not the password")
    assert unknown.status_code == wrong.status_code == 401
    assert auth.WRONG_CREDENTIALS in unknown.text
    assert auth.WRONG_CREDENTIALS in wrong.text


def test_a_deactivated_account_cannot_sign_in(app, fast_hashing):
    make_user("admin@example.com", "admin")
    ops = make_user("ops@example.com", "operator")
    from portal.admin import operations
    from portal.admin.audit import Actor

    operations.update_user(Actor.command_line(), ops.id, active=False)
    response = sign_in(app.test_client(), "ops@example.com")
    assert response.status_code == 401
    assert audit_entries("login")[-1].detail["reason"] == "inactive account"


def test_sign_in_without_a_csrf_token_is_refused(app, fast_hashing):
    make_user("ops@example.com", "operator")
    response = app.test_client().post(
        "/admin/login", data={"email": "ops@example.com", "password": PASSWORD}
    )
    assert response.status_code == 400
    assert audit_entries("login") == []


def test_sign_in_starts_a_fresh_session(app, fast_hashing):
    make_user("ops@example.com", "operator")
    client = app.test_client()
    client.get("/admin/login")
    with client.session_transaction() as session:
        session["planted"] = "by someone else"
        before = session["csrf_token"]
    sign_in(client, "ops@example.com")
    with client.session_transaction() as session:
        assert "planted" not in session
        assert session.get("csrf_token") != before
        assert session["admin_user_id"] == user("ops@example.com").id


def test_the_session_cookie_is_httponly_and_samesite(app, fast_hashing):
    make_user("ops@example.com", "operator")
    client = app.test_client()
    page = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        data={"csrf_token": csrf(page.text), "email": "ops@example.com", "password": PASSWORD},
    )
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("portal_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_the_cookie_is_secure_on_https(make_app, fast_hashing):
    app = make_app(PUBLIC_URL="https://pay.example.com")
    make_user("ops@example.com", "operator")
    client = app.test_client()
    page = client.get("/admin/login", base_url="https://pay.example.com")
    response = client.post(
        "/admin/login",
        base_url="https://pay.example.com",
        data={"csrf_token": csrf(page.text), "email": "ops@example.com", "password": PASSWORD},
        headers={"Referer": "https://pay.example.com/admin/login"},  # CSRF checks it on https
    )
    assert response.status_code == 303
    assert "Secure" in response.headers["Set-Cookie"]


# --- lockout -----------------------------------------------------------------------------------


def test_five_failures_lock_the_account_for_fifteen_minutes(app, fast_hashing):
    make_user("ops@example.com", "operator")
    client = app.test_client()
    for _ in range(4):
        assert sign_in(client, "ops@example.com", "guess " * 3).status_code == 401
    fifth = sign_in(client, "ops@example.com", "guess " * 3)
    assert fifth.status_code == 429
    assert "locked for 15 more minutes" in fifth.text
    # Now even the right password is refused, from any address, and nothing is checked.
    locked = sign_in(app.test_client(), "ops@example.com", REMOTE_ADDR="203.0.113.9")
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text
    assert audit_entries("login")[-1].outcome == "refused"
    with db.reader() as session:
        assert len(session.scalars(select(LoginAttempt)).all()) == 5


def test_the_lock_lifts_after_fifteen_minutes(app, fast_hashing):
    make_user("ops@example.com", "operator")
    long_ago = utcnow().replace(microsecond=0)
    with db.transaction() as session:
        for minutes in (20, 19, 18, 17, 16):
            session.add(
                LoginAttempt(
                    email="ops@example.com",
                    ip_address="127.0.0.1",
                    succeeded=False,
                    created_at=long_ago - timedelta(minutes=minutes),
                )
            )
    assert sign_in(app.test_client(), "ops@example.com").status_code == 303


def test_a_successful_sign_in_resets_the_count(app, fast_hashing):
    make_user("ops@example.com", "operator")
    client = app.test_client()
    for _ in range(4):
        sign_in(client, "ops@example.com", "guess " * 3)
    assert sign_in(client, "ops@example.com").status_code == 303
    other = app.test_client()
    for _ in range(4):
        assert sign_in(other, "ops@example.com", "guess " * 3).status_code == 401


def test_one_address_guessing_many_accounts_is_locked_out(make_app, fast_hashing):
    app = make_app(ADMIN_LOGIN_IP_MAX_FAILURES="3")
    make_user("ops@example.com", "operator")
    client = app.test_client()
    for name in ("a", "b", "c"):
        sign_in(client, f"{name}@example.com", "guess " * 3, REMOTE_ADDR="192.0.2.1")
    refused = sign_in(app.test_client(), "ops@example.com", REMOTE_ADDR="192.0.2.1")
    assert refused.status_code == 429
    # The same account from another address is fine: the address was locked, not the account.
    assert sign_in(app.test_client(), "ops@example.com", REMOTE_ADDR="192.0.2.2").status_code == 303


def test_the_address_behind_a_trusted_proxy_is_the_forwarded_one(make_app, fast_hashing):
    app = make_app(TRUSTED_PROXY_HOPS="1")
    make_user("ops@example.com", "operator")
    client = app.test_client()
    page = client.get("/admin/login")
    client.post(
        "/admin/login",
        data={"csrf_token": csrf(page.text), "email": "ops@example.com", "password": PASSWORD},
        headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.23", "User-Agent": "Firefox/140"},
    )
    entry = audit_entries("login")[-1]
    assert entry.ip_address == "198.51.100.23"  # the spoofable left-most value is ignored
    assert entry.user_agent == "Firefox/140"


# --- session timeouts and signing out ----------------------------------------------------------


def test_an_idle_session_ends_after_the_idle_timeout(console):
    client = console("operator")
    with client.session_transaction() as session:
        session[SESSION_SEEN] = int(time.time()) - 31 * 60
    response = client.get("/admin/dashboard")
    assert response.status_code == 302
    page = client.get(response.headers["Location"])
    assert "signed out after a period of inactivity" in page.text


def test_activity_keeps_the_session_alive(console):
    client = console("operator")
    with client.session_transaction() as session:
        session[SESSION_SEEN] = int(time.time()) - 29 * 60
    assert client.get("/admin/dashboard").status_code == 200
    with client.session_transaction() as session:
        assert session[SESSION_SEEN] >= int(time.time()) - 5


def test_a_session_ends_after_the_absolute_timeout_even_when_busy(console):
    client = console("operator")
    with client.session_transaction() as session:
        session[SESSION_STARTED] = int(time.time()) - 12 * 3600 - 60
    response = client.get("/admin/dashboard")
    assert response.status_code == 302
    assert "time limit" in client.get(response.headers["Location"]).text


def test_timeouts_follow_the_settings(make_app, fast_hashing):
    app = make_app(ADMIN_IDLE_MINUTES="5", ADMIN_SESSION_HOURS="1")
    make_user("ops@example.com", "operator")
    client = app.test_client()
    sign_in(client, "ops@example.com")
    with client.session_transaction() as session:
        session[SESSION_SEEN] = int(time.time()) - 6 * 60
    assert client.get("/admin/dashboard").status_code == 302


def test_sign_out_clears_the_session_and_the_old_cookie_stops_working(console):
    client = console("operator")
    cookie = client.get_cookie("portal_session").value
    page = client.get("/admin/dashboard")
    response = client.post("/admin/logout", data={"csrf_token": csrf(page.text)})
    assert response.status_code == 303
    assert client.get("/admin/dashboard").status_code == 302
    # A copy of the signed-in cookie (stolen, or kept in another tab) is refused as well.
    client.set_cookie("portal_session", cookie)
    assert client.get("/admin/dashboard").status_code == 302
    assert [e.action for e in audit_entries()][-1] == "logout"


def test_sign_out_needs_the_csrf_token(console):
    client = console("operator")
    assert client.post("/admin/logout").status_code == 400
    assert client.get("/admin/dashboard").status_code == 200


def test_deactivating_a_user_ends_their_session_at_once(console):
    operator = console("operator")
    admin = console("admin")
    page = admin.get("/admin/users")
    prefix = f"user{operator.user.id}"
    response = admin.post(
        f"/admin/users/{operator.user.id}",
        data={f"{prefix}-csrf_token": csrf(page.text), f"{prefix}-role": "operator"},
    )
    assert response.status_code == 303
    assert operator.get("/admin/dashboard").status_code == 302


# --- roles on every route ----------------------------------------------------------------------

GET_PAGES = {
    "/admin/dashboard": "dashboard",
    "/admin/orders": "orders",
    "/admin/orders.csv": "orders",
    "/admin/orders/{ref}": "orders",
    "/admin/orders/{ref}/retry": "orders.act",
    "/admin/orders/{ref}/refund": "orders.act",
    "/admin/orders/{ref}/cancel": "orders.act",
    "/admin/orders/{ref}/resolve": "orders.act",
    "/admin/webhooks": "orders",
    "/admin/webhooks/{delivery}": "orders",
    "/admin/webhooks/{delivery}/resend": "orders.act",
    "/admin/branding": "branding",
    "/admin/branding/brands/new": "branding",
    "/admin/branding/brands/{brand}": "branding",
    "/admin/branding/brands/{brand}/versions/{number}/preview": "branding",
    "/admin/branding/brands/{brand}/versions/{number}/theme.css": "branding",
    "/admin/branding/templates/{template}": "branding",
    "/admin/branding/templates/{template}/preview": "branding",
    "/admin/users": "users",
    "/admin/settings": "settings",
    "/admin/audit": "audit",
}
ALLOWED = {
    "admin": {"dashboard", "orders", "orders.act", "branding", "users", "settings", "audit"},
    "operator": {"dashboard", "orders", "orders.act"},
    "marketer": {"branding"},
}


def make_delivery(order) -> int:
    """A merchant webhook delivery about `order`, for the delivery log's pages."""
    key = make_key()
    with db.transaction() as session:
        delivery = WebhookDelivery(
            event_id="evt_" + "0" * 32,
            event_type="order.paid",
            endpoint_id=key.endpoint.id,
            order_id=order.id,
            body="{}",
        )
        session.add(delivery)
        session.flush()
        return delivery.id


@pytest.mark.parametrize("role", ["admin", "operator", "marketer"])
def test_each_role_reaches_exactly_its_pages(console, role):
    order = make_order()
    delivery = make_delivery(order)
    brand = save_brand(Actor.command_line("test"), BrandInput("Academy", *DEFAULT_COLOURS.values()))
    client = console(role)
    for path, permission in GET_PAGES.items():
        response = client.get(
            path.format(
                ref=order.reference,
                brand=brand.id,
                template="review.html",
                delivery=delivery,
                number=1,
            )
        )
        expected = 200 if permission in ALLOWED[role] else 403
        assert response.status_code == expected, (role, path, response.status_code)
        if expected == 403:
            assert "Not allowed" in response.text
            assert "learner@example.com" not in response.text


def test_every_console_route_is_covered_by_the_guard(app):
    """A console route that declares no permission is refused to everyone, so a new route
    cannot be left open by mistake; this lists them all to be sure none is unmarked."""
    routes = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("admin.")]
    assert len(routes) >= 17
    for rule in routes:
        view = app.view_functions[rule.endpoint]
        public = getattr(view, "public", False)
        permission = getattr(view, "required_permission", None)
        assert public or permission, rule
        if public:
            assert rule.endpoint in {
                "admin.login",
                "admin.logout",
                "admin.sso_start",
                "admin.sso_callback",
            }
    # the tested page list covers every GET page that needs a permission
    paths = {
        r.rule
        for r in routes
        if "GET" in r.methods and not getattr(app.view_functions[r.endpoint], "public", False)
    }
    covered = {
        p.replace("{ref}", "<reference>")
        .replace("{brand}", "<int:brand_id>")
        .replace("{template}", "<path:name>")
        .replace("{delivery}", "<int:delivery_id>")
        .replace("{number}", "<int:number>")
        for p in GET_PAGES
    } | {"/admin/"}
    assert paths == covered


def test_a_signed_out_visitor_sees_nothing_anywhere(app):
    order = make_order()
    client = app.test_client()
    token = csrf(client.get("/admin/login").text)
    for path in GET_PAGES:
        response = client.get(
            path.format(ref=order.reference, brand=1, template="review.html", delivery=1, number=1)
        )
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/admin/login")
        assert "learner@example.com" not in response.text
    for action in ("retry", "refund", "cancel", "resolve"):
        response = client.post(
            f"/admin/orders/{order.reference}/{action}",
            data={"csrf_token": token, "confirm": "y", "reason": "because", "amount": "78.40"},
        )
        assert response.status_code == 302
        assert response.headers["Location"] == "/admin/login"
    response = client.post(
        "/admin/users",
        data={"csrf_token": token, "email": "x@example.com", "role": "admin", "password": "x" * 12},
    )
    assert response.status_code == 302
    assert user("x@example.com") is None


def test_a_denied_request_is_audited(console):
    client = console("marketer")
    assert client.get("/admin/orders").status_code == 403
    entry = audit_entries("access.denied")[-1]
    assert entry.actor == "marketer@example.com"
    assert entry.outcome == "denied"
    assert entry.target == "/admin/orders"
    assert entry.detail == {"method": "GET", "needs": "orders", "role": "marketer"}


def test_home_sends_each_role_to_its_start_page(console):
    assert console("operator").get("/admin/").headers["Location"] == "/admin/dashboard"
    assert console("marketer").get("/admin/").headers["Location"] == "/admin/branding"


def test_navigation_shows_only_what_the_role_may_open(console):
    page = console("marketer").get("/admin/branding").text
    assert 'href="/admin/branding"' in page
    assert 'href="/admin/orders"' not in page
    assert 'href="/admin/users"' not in page
    page = console("admin").get("/admin/dashboard").text
    for path in ("/admin/orders", "/admin/branding", "/admin/users", "/admin/audit"):
        assert f'href="{path}"' in page


def test_console_pages_are_never_cached(console):
    response = console("operator").get("/admin/dashboard")
    assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


# --- users (admin) -----------------------------------------------------------------------------


def test_an_admin_adds_a_user_who_can_then_sign_in(console, app):
    admin = console("admin")
    page = admin.get("/admin/users")
    response = admin.post(
        "/admin/users",
        data={
            "csrf_token": csrf(page.text),
            "email": "New.Marketer@example.com",
            "role": "marketer",
            "password": "long enough password",
            "password_again": "long enough password",
        },
    )
    assert response.status_code == 303
    assert "new.marketer@example.com" in admin.get("/admin/users").text
    newcomer = app.test_client()
    assert sign_in(newcomer, "new.marketer@example.com", "long enough password").status_code == 303
    assert newcomer.get("/admin/branding").status_code == 200
    entry = audit_entries("users.create")[-1]
    assert (entry.actor, entry.target) == ("admin@example.com", "new.marketer@example.com")


def test_a_short_password_is_refused(console):
    admin = console("admin")
    page = admin.get("/admin/users")
    response = admin.post(
        "/admin/users",
        data={
            "csrf_token": csrf(page.text),
            "email": "x@example.com",
            "role": "operator",
            "password": "short",
            "password_again": "short",
        },
    )
    assert response.status_code == 400
    assert "at least 12" in response.text
    assert user("x@example.com") is None


def test_an_admin_changes_a_role_and_it_applies_at_once(console):
    operator = console("operator")
    admin = console("admin")
    page = admin.get("/admin/users")
    prefix = f"user{operator.user.id}"
    admin.post(
        f"/admin/users/{operator.user.id}",
        data={
            f"{prefix}-csrf_token": csrf(page.text),
            f"{prefix}-role": "marketer",
            f"{prefix}-active": "y",
        },
    )
    assert operator.get("/admin/orders").status_code == 403
    assert operator.get("/admin/branding").status_code == 200
    assert audit_entries("users.update")[-1].detail == {"role": ["operator", "marketer"]}


def test_the_last_admin_cannot_demote_themselves(console):
    admin = console("admin")
    page = admin.get("/admin/users")
    prefix = f"user{admin.user.id}"
    response = admin.post(
        f"/admin/users/{admin.user.id}",
        data={f"{prefix}-csrf_token": csrf(page.text), f"{prefix}-role": "operator"},
        follow_redirects=True,
    )
    assert "leave no active admin" in response.text
    assert user("admin@example.com").role == "admin"
    assert user("admin@example.com").active


def test_the_settings_page_hides_secrets(console):
    page = console("admin").get("/admin/settings").text
    assert "PORTAL_STRIPE_SECRET_KEY" in page
    assert "sk_test_unit" not in page
    assert "test-secret-key" not in page
    assert "sj-unit-key" not in page
    assert "https://stripe.test" in page  # plain settings are shown


def test_the_audit_log_lists_and_filters(console):
    admin = console("admin")
    sign_in(admin.application.test_client(), "admin@example.com", "wrong wrong wrong")
    page = admin.get("/admin/audit?action=login").text
    assert "failed" in page
    assert "users.create" not in page.split("<tbody>")[1]
    assert admin.get("/admin/audit?actor=admin@example.com").status_code == 200


# --- the create-user command -------------------------------------------------------------------


def test_create_user_prompts_for_the_password_twice(runner, fast_hashing):
    result = runner.invoke(
        args=["portal", "create-user", "Ops@Example.com", "--role", "operator"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "created ops@example.com (operator)" in result.output
    assert PASSWORD not in result.output
    assert verify_password(user("ops@example.com").password_hash, PASSWORD)
    entry = audit_entries("users.create")[-1]
    assert entry.actor == "command line"


def test_create_user_reads_stdin_and_refuses_duplicates_and_short_passwords(runner, fast_hashing):
    args = ["portal", "create-user", "ops@example.com", "--role", "admin", "--password-stdin"]
    assert runner.invoke(args=args, input=PASSWORD + "\n").exit_code == 0
    again = runner.invoke(args=args, input=PASSWORD + "\n")
    assert again.exit_code == 1
    assert "already a user ops@example.com" in again.output
    short = runner.invoke(
        args=["portal", "create-user", "b@example.com", "--role", "admin", "--password-stdin"],
        input="short\n",
    )
    assert short.exit_code == 1
    assert "at least 12" in short.output
    bad_role = runner.invoke(args=[*args[:4], "--role", "root", "--password-stdin"], input="x\n")
    assert bad_role.exit_code == 2


def test_create_user_update_resets_the_password(runner, app, fast_hashing):
    args = ["portal", "create-user", "ops@example.com", "--role", "operator", "--password-stdin"]
    runner.invoke(args=args, input=PASSWORD + "\n")
    result = runner.invoke(args=[*args, "--update"], input="a brand new password\n")
    assert result.exit_code == 0, result.output
    assert sign_in(app.test_client(), "ops@example.com").status_code == 401
    assert sign_in(app.test_client(), "ops@example.com", "a brand new password").status_code == 303


# --- single sign-on (OpenID Connect) -----------------------------------------------------------

IDP = "https://idp.test"
SSO_SETTINGS = {
    "OIDC_ISSUER": IDP,
    "OIDC_CLIENT_ID": "portal-console",
    "OIDC_CLIENT_SECRET": "idp-client-secret",
    "OIDC_ROLE_MAP": "portal-admins:admin,support:operator,marketing:marketer",
}
DISCOVERY = {
    "issuer": IDP,
    "authorization_endpoint": f"{IDP}/authorize",
    "token_endpoint": f"{IDP}/token",
    "jwks_uri": f"{IDP}/jwks",
    "userinfo_endpoint": f"{IDP}/userinfo",
    "id_token_signing_alg_values_supported": ["RS256"],
}


@pytest.fixture(scope="module")
def idp_key():
    from joserfc.jwk import RSAKey

    return RSAKey.generate_key(2048, parameters={"kid": "idp-1", "use": "sig", "alg": "RS256"})


@pytest.fixture
def idp(make_app, mocked, idp_key):
    """An identity provider stood in by `responses`: discovery, JWKS and a token endpoint that
    answers with an ID token signed by its key."""
    from urllib.parse import parse_qs, urlsplit

    from joserfc import jwt

    app = make_app(**SSO_SETTINGS)
    mocked.get(f"{IDP}/.well-known/openid-configuration", json=DISCOVERY)
    mocked.get(f"{IDP}/jwks", json={"keys": [idp_key.as_dict(private=False)]})

    class IdP:
        def __init__(self):
            self.app = app

        def sign_in(self, client, key=idp_key, nonce=None, userinfo=None, **claims):
            start = client.get("/admin/login/sso")
            assert start.status_code == 302
            location = urlsplit(start.headers["Location"])
            assert f"{location.scheme}://{location.netloc}{location.path}" == f"{IDP}/authorize"
            query = {k: v[0] for k, v in parse_qs(location.query).items()}
            self.authorize = query
            now = int(time.time())
            id_claims = {
                "iss": IDP,
                "sub": "idp-user-42",
                "aud": "portal-console",
                "iat": now,
                "exp": now + 300,
                "nonce": nonce or query["nonce"],
                "email": "sso.person@example.com",
                "email_verified": True,
                **claims,
            }
            id_token = jwt.encode({"alg": "RS256", "kid": "idp-1"}, id_claims, key)
            mocked.upsert(
                "POST",
                f"{IDP}/token",
                json={"access_token": "at-1", "token_type": "Bearer", "id_token": id_token},
            )
            if userinfo is not None:
                mocked.get(f"{IDP}/userinfo", json=userinfo)
            return client.get(
                "/admin/login/sso/callback",
                query_string={"code": "code-1", "state": query["state"]},
            )

    return IdP()


def test_the_sign_in_page_offers_single_sign_on_when_configured(idp, client):
    assert "Sign in with single sign-on" in idp.app.test_client().get("/admin/login").text
    assert "single sign-on" not in client.get("/admin/login").text
    assert client.get("/admin/login/sso").status_code == 404


def test_single_sign_on_creates_the_user_with_the_mapped_role(idp, mocked):
    client = idp.app.test_client()
    response = idp.sign_in(client, groups=["support", "everyone"])
    assert response.status_code == 303, response.text
    assert response.headers["Location"] == "/admin/"
    assert idp.authorize["client_id"] == "portal-console"
    assert idp.authorize["redirect_uri"] == "http://portal.test/admin/login/sso/callback"
    assert idp.authorize["scope"] == "openid email profile"
    assert idp.authorize["code_challenge_method"] == "S256"
    token_request = next(c.request for c in mocked.calls if c.request.url == f"{IDP}/token")
    assert "code=code-1" in token_request.body
    assert "code_verifier=" in token_request.body
    person = user("sso.person@example.com")
    assert (person.role, person.oidc_subject, person.password_hash) == (
        "operator",
        f"{IDP}|idp-user-42",
        None,
    )
    assert client.get("/admin/orders").status_code == 200
    assert client.get("/admin/users").status_code == 403
    entry = audit_entries("login")[-1]
    assert (entry.outcome, entry.detail) == ("ok", {"method": "sso", "role": "operator"})


def test_the_widest_mapped_role_wins_and_is_refreshed_each_sign_in(idp):
    idp.sign_in(idp.app.test_client(), groups=["marketing", "portal-admins"])
    assert user("sso.person@example.com").role == "admin"
    idp.sign_in(idp.app.test_client(), groups=["marketing"])
    assert user("sso.person@example.com").role == "marketer"


def test_single_sign_on_without_a_mapped_role_is_refused(idp):
    client = idp.app.test_client()
    response = idp.sign_in(client, groups=["everyone"])
    assert response.status_code == 403
    assert "has no role in this console" in response.text
    assert user("sso.person@example.com") is None
    assert client.get("/admin/dashboard").status_code == 302
    entry = audit_entries("login")[-1]
    assert (entry.outcome, entry.detail["reason"]) == ("refused", "no mapped role")


def test_groups_only_in_userinfo_are_read_from_there(idp):
    response = idp.sign_in(
        idp.app.test_client(), userinfo={"sub": "idp-user-42", "groups": ["portal-admins"]}
    )
    assert response.status_code == 303
    assert user("sso.person@example.com").role == "admin"


def test_an_id_token_signed_by_another_key_is_refused(idp):
    from joserfc.jwk import RSAKey

    forged = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})
    response = idp.sign_in(idp.app.test_client(), key=forged, groups=["portal-admins"])
    assert response.status_code == 401
    assert "did not complete" in response.text
    assert user("sso.person@example.com") is None
    assert audit_entries("login")[-1].outcome == "failed"


def test_an_id_token_for_another_sign_in_is_refused(idp):
    response = idp.sign_in(idp.app.test_client(), nonce="replayed", groups=["portal-admins"])
    assert response.status_code == 401
    assert user("sso.person@example.com") is None


def test_a_callback_without_our_state_is_refused(idp):
    response = idp.app.test_client().get(
        "/admin/login/sso/callback", query_string={"code": "x", "state": "forged"}
    )
    assert response.status_code == 401


def test_sso_links_a_local_account_only_by_a_verified_email(idp, fast_hashing):
    make_user("sso.person@example.com", "marketer")
    refused = idp.sign_in(idp.app.test_client(), email_verified=False, groups=["support"])
    assert refused.status_code == 403
    assert user("sso.person@example.com").oidc_subject is None
    linked = idp.sign_in(idp.app.test_client(), groups=["support"])
    assert linked.status_code == 303
    person = user("sso.person@example.com")
    assert (person.role, person.oidc_subject) == ("operator", f"{IDP}|idp-user-42")


def test_a_deactivated_sso_user_is_refused(idp, fast_hashing):
    idp.sign_in(idp.app.test_client(), groups=["support"])
    from portal.admin import operations
    from portal.admin.audit import Actor

    operations.update_user(Actor.command_line(), user("sso.person@example.com").id, active=False)
    response = idp.sign_in(idp.app.test_client(), groups=["support"])
    assert response.status_code == 403
    assert "deactivated" in response.text


def test_role_claims_can_be_nested_or_single_values():
    from portal.admin.oidc import role_for

    mapping = {"ops": "operator", "boss": "admin", "brand": "marketer"}
    assert role_for({"realm_access": {"roles": ["x", "ops"]}}, "realm_access.roles", mapping) == (
        "operator"
    )
    assert role_for({"role": "boss"}, "role", mapping) == "admin"
    assert role_for({"groups": "brand"}, "groups", mapping) == "marketer"
    assert role_for({"groups": ["nope"]}, "groups", mapping) is None
    assert role_for({}, "groups", mapping) is None
    assert role_for({"groups": [{"name": "ops"}]}, "groups", mapping) is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"OIDC_ISSUER": IDP}, "PORTAL_OIDC_CLIENT_ID"),
        ({"OIDC_CLIENT_ID": "x", "OIDC_CLIENT_SECRET": "y"}, "PORTAL_OIDC_ISSUER"),
        ({**SSO_SETTINGS, "OIDC_CLIENT_SECRET": ""}, "PORTAL_OIDC_CLIENT_SECRET"),
        ({**SSO_SETTINGS, "OIDC_ROLE_MAP": ""}, "PORTAL_OIDC_ROLE_MAP is required"),
        ({**SSO_SETTINGS, "OIDC_ROLE_MAP": "support:root"}, "PORTAL_OIDC_ROLE_MAP is malformed"),
        ({**SSO_SETTINGS, "OIDC_ROLE_MAP": "support"}, "PORTAL_OIDC_ROLE_MAP is malformed"),
        ({**SSO_SETTINGS, "OIDC_SCOPES": "email"}, "PORTAL_OIDC_SCOPES"),
        ({"ADMIN_IDLE_MINUTES": "0"}, "PORTAL_ADMIN_IDLE_MINUTES"),
    ],
)
def test_a_broken_console_configuration_stops_the_app(make_app, settings, message):
    from portal.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_app(**settings)


def test_userinfo_about_someone_else_is_refused(idp):
    response = idp.sign_in(
        idp.app.test_client(), userinfo={"sub": "someone-else", "groups": ["portal-admins"]}
    )
    assert response.status_code == 401
    assert user("sso.person@example.com") is None


def test_the_role_map_setting_knows_exactly_the_console_roles():
    from portal.config import ROLES
    from portal.models import Role

    assert set(ROLES) == {str(role) for role in Role}
