"""Console views. Each one parses its input (a form), calls one query or operation, and renders or
redirects. The blueprint's guard runs first on every console request: it enforces the session
timeouts and the permission the view declares (`auth.requires`); a view that declares none is
refused to everyone, so a new route cannot be left open by mistake."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask import (
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from wtforms import SelectChoice

from portal import ratelimit
from portal.admin import audit, auth, bp, figures, oidc, operations, queries
from portal.admin.audit import Actor
from portal.admin.forms import (
    AuditFilterForm,
    CreateUserForm,
    LoginForm,
    SignOutForm,
    UpdateUserForm,
)
from portal.config import Settings, declarations
from portal.models import Role
from portal.money import (
    format_money,
)
from portal.urls import mask_credentials


def services():
    return current_app.extensions["portal"]


def settings() -> Settings:
    return current_app.config["PORTAL"]


def client_ip() -> str:
    """The visitor's address; behind `PORTAL_TRUSTED_PROXY_HOPS` proxies, the address the
    nearest of them saw (the one a visitor cannot forge): ProxyFix, wired in create_app, has put
    it in `remote_addr`. The rate limits key on the same address."""
    return ratelimit.client_ip()


def actor() -> Actor:
    user = g.get("admin_user")
    return Actor(
        user.id if user else None,
        user.email if user else "(signed out)",
        client_ip(),
        request.user_agent.string[:300] or None,
    )


def safe_next(target: str | None) -> str | None:
    """Only a console path of ours: never another host (an open redirect)."""
    if not target:
        return None
    target = target.rstrip("?")
    if re.fullmatch(r"/admin(/[^\\\s]*)?", target) and not target.startswith("//"):
        return target
    return None


@bp.before_request
def guard():
    view = current_app.view_functions.get(request.endpoint)
    check = auth.check_session(settings(), session)
    g.admin_user = check.user
    if getattr(view, "public", False):
        return None
    if check.user is None:
        if check.expired:
            flash(check.expired, "info")
        target = request.full_path if request.method == "GET" else None
        return redirect(url_for("admin.login", next=safe_next(target)))
    permission = getattr(view, "required_permission", None)
    if permission is None or not auth.can(check.user.role, permission):
        audit.record(
            actor(),
            "access.denied",
            "denied",
            target=request.path,
            detail={"method": request.method, "needs": permission, "role": check.user.role},
        )
        abort(403)
    return None


@bp.after_request
def no_store(response):
    # Console pages carry learners' personal data: never cache them anywhere.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.context_processor
def console_globals():
    user = g.get("admin_user")
    return {
        "admin_user": user,
        "can": lambda permission: auth.can(user.role if user else None, permission),
        "sign_out_form": SignOutForm() if user else None,
        "sso_enabled": oidc.enabled(settings()),
        "platform_label": lambda name: platform_labels().get(name, name),
    }


def platform_labels() -> dict[str, str]:
    return {name: p.label or name for name, p in services().platforms.items()}


def page_number() -> int:
    try:
        return max(1, int(request.args.get("page", "1")))
    except ValueError:
        return 1


@bp.app_template_filter("admin_time")
def admin_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("admin_money")
def admin_money(amount_minor: int | None, currency: str) -> str:
    if amount_minor is None:
        return "—"
    return format_money(amount_minor, currency, "en")


# --- signing in and out ------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
@auth.public
def login():
    if g.admin_user is not None:
        return redirect(safe_next(request.args.get("next")) or url_for("admin.home"))
    form = LoginForm()
    error = None
    status = 200
    if form.validate_on_submit():
        result = auth.sign_in_with_password(
            settings(), actor(), form.email.data, form.password.data
        )
        if result.user is not None:
            auth.start_session(session, result.user)
            return redirect(safe_next(request.args.get("next")) or url_for("admin.home"), 303)
        error = result.error
        status = 429 if result.locked else 401
    elif request.method == "POST":
        status = 400
    return render_template("admin/login.html", form=form, error=error), status


@bp.get("/login/sso")
@auth.public
def sso_start():
    if not oidc.enabled(settings()):
        abort(404)
    redirect_uri = settings().public_url + url_for("admin.sso_callback")
    return oidc.client(current_app).authorize_redirect(redirect_uri)


@bp.get("/login/sso/callback")
@auth.public
def sso_callback():
    if not oidc.enabled(settings()):
        abort(404)
    from authlib.integrations.base_client import OAuthError
    from joserfc.errors import JoseError
    from requests import RequestException

    sso = oidc.client(current_app)
    try:
        token = sso.authorize_access_token()
        claims = dict(token.get("userinfo") or {})
        if not claims:
            raise OAuthError(description="the provider sent no ID token")
        role_claim = settings().oidc_role_claim.split(".")[0]
        if role_claim not in claims and sso.load_server_metadata().get("userinfo_endpoint"):
            extra = sso.userinfo(token=token)
            if extra.get("sub") != claims.get("sub"):  # OpenID Connect Core 5.3.2
                raise OAuthError(description="userinfo is about someone else")
            claims.update({k: v for k, v in extra.items() if k not in {"iss", "sub", "aud"}})
    except (OAuthError, JoseError, RequestException, ValueError, KeyError) as exc:
        audit.record(actor(), "login", "failed", detail={"method": "sso", "error": str(exc)[:300]})
        error = "Single sign-on did not complete. Please try again."
        return render_template("admin/login.html", form=LoginForm(), error=error), 401
    result = oidc.sign_in(settings(), actor(), claims)
    if result.user is None:
        return render_template("admin/login.html", form=LoginForm(), error=result.error), 403
    auth.start_session(session, result.user)
    return redirect(url_for("admin.home"), 303)


@bp.post("/logout")
@auth.public
def logout():
    user = g.admin_user
    if user is not None:
        audit.record(actor(), "logout")
        auth.end_session(session, user.id)
    else:
        auth.end_session(session)
    flash("You are signed out.", "info")
    return redirect(url_for("admin.login"), 303)


# --- home and dashboard ------------------------------------------------------------------------


@bp.get("/")
@auth.requires("home")
def home():
    if auth.can(g.admin_user.role, "dashboard"):
        return redirect(url_for("admin.dashboard"))
    return redirect(url_for("admin.branding"))


@bp.get("/dashboard")
@auth.requires("dashboard")
def dashboard():
    return render_template("admin/dashboard.html", board=figures.dashboard())


# --- branding: portal/admin/branding.py ----------------------------------------------------------


# --- users, settings, audit log ----------------------------------------------------------------


@bp.route("/users", methods=["GET", "POST"])
@auth.requires("users")
def users():
    form = CreateUserForm()
    status = 200
    if form.validate_on_submit():
        try:
            operations.create_user(
                actor(), form.email.data, form.role.data, form.password.data or None
            )
        except operations.UserError as exc:
            flash(str(exc), "error")
            status = 400
        else:
            flash(f"User {form.email.data.strip().lower()} created.", "ok")
            return redirect(url_for("admin.users"), 303)
    elif request.method == "POST":
        status = 400
    people = queries.users()
    update_forms = {
        user.id: UpdateUserForm(
            formdata=None, prefix=f"user{user.id}", role=user.role, active=user.active
        )
        for user in people
    }
    return render_template(
        "admin/users.html", form=form, people=people, update_forms=update_forms
    ), status


@bp.post("/users/<int:user_id>")
@auth.requires("users")
def update_user(user_id):
    form = UpdateUserForm(prefix=f"user{user_id}")
    if not form.validate_on_submit():
        errors = "; ".join(e for field_errors in form.errors.values() for e in field_errors)
        flash(f"Not saved: {errors}", "error")
        return redirect(url_for("admin.users"), 303)
    try:
        user = operations.update_user(
            actor(),
            user_id,
            role=form.role.data,
            active=form.active.data,
            password=form.password.data or None,
        )
    except operations.UserError as exc:
        flash(str(exc), "error")
    else:
        flash(f"User {user.email} saved.", "ok")
    return redirect(url_for("admin.users"), 303)


def _setting_display(setting, value) -> str:
    """Secrets are hidden; URL-shaped settings (SMTP, Redis, databases) show with their
    passwords masked."""
    if value is None or value == "" or value == () or value == {}:
        return "—"
    name = setting.name
    if any(word in name for word in ("SECRET", "KEY", "TOKEN", "PASSWORD")) or name in {
        "ALERT_WEBHOOK_URL"
    }:
        return "set (hidden)"
    # Any value may be a URL with a password in it (PORTAL_SMTP_URL=smtp://user:pass@...,
    # redis://:pass@..., postgresql://u:p@...): every one is shown through the same mask.
    if isinstance(value, tuple | list):
        return mask_credentials(", ".join(str(v) for v in value))
    if isinstance(value, dict):
        return mask_credentials(", ".join(f"{k}:{v}" for k, v in value.items()))
    return mask_credentials(str(value))


@bp.get("/settings")
@auth.requires("settings")
def settings_page():
    values = settings()
    rows = [
        (f"PORTAL_{s.name}", _setting_display(s, getattr(values, s.attribute)))
        for s in declarations(values)
    ]
    return render_template("admin/settings.html", rows=rows, roles=list(Role))


@bp.get("/audit")
@auth.requires("audit")
def audit_log():
    form = AuditFilterForm(formdata=request.args)
    form.action.choices = [SelectChoice("", "any")] + [
        SelectChoice(action) for action in queries.audit_actions()
    ]
    form.validate()
    found = queries.audit_log(form.actor.data or None, form.action.data or None, page_number())
    args = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template("admin/audit.html", form=form, found=found, args=args)
