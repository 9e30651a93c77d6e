"""Who may use the console: password hashing (werkzeug.security's scrypt), sign-in with lockout,
console sessions with idle and absolute timeouts, and the role each route needs.

Sessions live in Flask's signed cookie (HttpOnly, SameSite=Lax, Secure on https). The cookie holds
the user id, the user's session epoch and two timestamps; every request checks them against the
database and the clock, so a timeout, a sign-out or a deactivated account takes effect at once on
every worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from portal.admin import audit
from portal.admin.audit import Actor
from portal.config import Settings
from portal.db import db
from portal.models import LoginAttempt, Role, User, utcnow

# --- passwords ---------------------------------------------------------------------------------

# werkzeug.security's scrypt at 2^15 x 8 x 1: 32 MiB and tens of milliseconds per guess (RFC 7914;
# OWASP's password storage advice). The method and its parameters are stored with each hash
# (`scrypt:32768:8:1$salt$hash`), so raising them later only rehashes at the next sign-in.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSWORD_LENGTH = 12
# Hashes written before werkzeug's were `scrypt$n$r$p$salt$hash` (base64): still verified, and
# replaced with werkzeug's at the next sign-in.
LEGACY_SCRYPT_MAXMEM = 64 * 1024 * 1024


def _method() -> str:
    return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}"


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=_method())


def _verify_legacy(stored: str, password: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=LEGACY_SCRYPT_MAXMEM,
            dklen=32,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def verify_password(stored: str | None, password: str) -> bool:
    if not stored:
        return False
    if stored.startswith("scrypt$"):
        return _verify_legacy(stored, password)
    try:
        return check_password_hash(stored, password)
    except (ValueError, TypeError):  # not a hash werkzeug knows
        return False


def needs_rehash(stored: str) -> bool:
    return not stored.startswith(_method() + "$")


_dummy_hash: str | None = None


def _burn_time(password: str) -> None:
    """Spend what a real check costs, so a response time never tells whether an account exists."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password("not a real password")
    verify_password(_dummy_hash, password)


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Use at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > 1024:
        return "Use at most 1024 characters."
    return None


def normalise_email(email: str) -> str:
    return (email or "").strip().lower()


# --- roles ------------------------------------------------------------------------------------

# What each role may do. Every console route names one of these permissions; a route that names
# none is refused to everyone (see routes.guard).
PERMISSIONS: dict[str, frozenset[str]] = {
    Role.ADMIN: frozenset(
        {"home", "dashboard", "orders", "orders.act", "branding", "users", "settings", "audit"}
    ),
    Role.OPERATOR: frozenset({"home", "dashboard", "orders", "orders.act"}),
    Role.MARKETER: frozenset({"home", "branding"}),
}


def can(role: str | None, permission: str) -> bool:
    return permission in PERMISSIONS.get(role or "", frozenset())


def requires(permission: str):
    """Mark a view with the permission it needs; the blueprint's guard enforces it."""

    def decorate(view):
        view.required_permission = permission
        return view

    return decorate


def public(view):
    """Mark a view that a signed-out visitor may reach (the sign-in pages)."""
    view.public = True
    return view


# --- lockout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lockout:
    until: datetime

    def minutes_left(self, now: datetime) -> int:
        return max(1, int((self.until - now).total_seconds() // 60) + 1)


def _locked_until(session, column, value, limit: int, minutes: int, now, since=None):
    """`limit` failures within `minutes` lock until `minutes` after the latest of them."""
    if limit <= 0:
        return None
    window = timedelta(minutes=minutes)
    start = now - 2 * window
    if since is not None and since > start:
        start = since
    failures = session.scalars(
        select(LoginAttempt.created_at)
        .where(column == value, LoginAttempt.succeeded.is_(False), LoginAttempt.created_at > start)
        .order_by(LoginAttempt.created_at.desc())
        .limit(200)
    ).all()
    for index in range(len(failures) - limit + 1):
        latest, earliest = failures[index], failures[index + limit - 1]
        if latest - earliest <= window:
            until = latest + window
            return until if until > now else None
    return None


def lockout(settings: Settings, email: str, ip_address: str, now: datetime | None = None):
    """The lockout in force for this account or this address, or None."""
    now = now or utcnow()
    minutes = settings.admin_lockout_minutes
    with db.reader() as session:
        last_success = session.scalar(
            select(func.max(LoginAttempt.created_at)).where(
                LoginAttempt.email == email, LoginAttempt.succeeded.is_(True)
            )
        )
        until = [
            _locked_until(
                session,
                LoginAttempt.email,
                email,
                settings.admin_login_max_failures,
                minutes,
                now,
                since=last_success,
            ),
            _locked_until(
                session,
                LoginAttempt.ip_address,
                ip_address,
                settings.admin_login_ip_max_failures,
                minutes,
                now,
            ),
        ]
    until = [u for u in until if u is not None]
    return Lockout(max(until)) if until else None


# --- signing in -------------------------------------------------------------------------------

WRONG_CREDENTIALS = "That email and password do not match an active account."


@dataclass
class SignIn:
    user: User | None
    error: str | None = None
    locked: bool = False


def _locked_message(lock: Lockout, now: datetime) -> str:
    minutes = lock.minutes_left(now)
    return (
        "Too many failed sign-ins: this account (or your network address) is locked for "
        f"{minutes} more minute{'s' if minutes != 1 else ''}. Please try again then."
    )


def sign_in_with_password(settings: Settings, actor: Actor, email: str, password: str) -> SignIn:
    """Check a password sign-in against lockout, record the attempt, and audit it."""
    email = normalise_email(email)[:320]
    actor = Actor(None, email or "(blank)", actor.ip_address, actor.user_agent)
    ip_address = actor.ip_address or "unknown"
    now = utcnow()
    lock = lockout(settings, email, ip_address, now)
    if lock is not None:
        audit.record(actor, "login", "refused", detail={"reason": "locked out"})
        return SignIn(None, _locked_message(lock, now), locked=True)
    with db.reader() as session:
        user = session.scalar(select(User).where(User.email == email))
    if user is not None and user.password_hash:
        valid = verify_password(user.password_hash, password)
    else:
        _burn_time(password)
        valid = False
    ok = valid and user.active
    values = {"last_login_at": now}
    if ok and needs_rehash(user.password_hash):
        values["password_hash"] = hash_password(password)
    with db.transaction() as session:
        session.add(LoginAttempt(email=email, ip_address=ip_address, succeeded=ok))
        if ok:
            session.execute(update(User).where(User.id == user.id).values(**values))
        reason = None
        if not ok:
            reason = "inactive account" if valid else "wrong email or password"
        audit.record(
            Actor(user.id if user else None, email, actor.ip_address, actor.user_agent),
            "login",
            "ok" if ok else "failed",
            detail={"method": "password", **({"reason": reason} if reason else {})},
            session=session,
        )
    if not ok:
        lock = lockout(settings, email, ip_address, utcnow())
        if lock is not None:
            return SignIn(None, _locked_message(lock, utcnow()), locked=True)
        return SignIn(None, WRONG_CREDENTIALS)
    return SignIn(user)


# --- console sessions -------------------------------------------------------------------------

SESSION_USER = "admin_user_id"
SESSION_EPOCH = "admin_epoch"
SESSION_STARTED = "admin_started_at"
SESSION_SEEN = "admin_seen_at"


def start_session(session: dict, user: User) -> None:
    """A fresh session on sign-in: whatever the visitor's cookie held before (a planted session,
    an old CSRF token) is dropped."""
    session.clear()
    now = int(time.time())
    session[SESSION_USER] = user.id
    session[SESSION_EPOCH] = user.session_epoch
    session[SESSION_STARTED] = now
    session[SESSION_SEEN] = now


def end_session(session: dict, user_id: int | None = None) -> None:
    """Sign out: clear the cookie, and bump the epoch so a copy of the old cookie is useless."""
    session.clear()
    if user_id is not None:
        with db.transaction() as tx:
            tx.execute(
                update(User).where(User.id == user_id).values(session_epoch=User.session_epoch + 1)
            )


@dataclass
class SessionCheck:
    user: User | None
    expired: str | None = None  # why a session that existed was ended


def check_session(settings: Settings, session: dict) -> SessionCheck:
    """The signed-in user, after enforcing the idle and absolute timeouts; refreshes the idle
    clock. A session that fails any check is cleared."""
    user_id = session.get(SESSION_USER)
    if user_id is None:
        return SessionCheck(None)
    now = int(time.time())
    started = int(session.get(SESSION_STARTED) or 0)
    seen = int(session.get(SESSION_SEEN) or 0)
    idle = settings.admin_idle_minutes * 60
    absolute = settings.admin_session_hours * 3600
    if now - seen > idle:
        session.clear()
        return SessionCheck(None, "You were signed out after a period of inactivity.")
    if now - started > absolute:
        session.clear()
        return SessionCheck(None, "Your session reached its time limit: please sign in again.")
    with db.reader() as tx:
        user = tx.get(User, user_id)
    if user is None or not user.active or user.session_epoch != session.get(SESSION_EPOCH):
        session.clear()
        return SessionCheck(None, "Your session has ended: please sign in again.")
    if now - seen >= 15:  # refresh the idle clock, without a new cookie on every request
        session[SESSION_SEEN] = now
    return SessionCheck(user)
