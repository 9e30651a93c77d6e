"""Console views. Each one parses its input (a form), calls one query or operation, and renders or
redirects. The blueprint's guard runs first on every console request: it enforces the session
timeouts and the permission the view declares (`auth.requires`); a view that declares none is
refused to everyone, so a new route cannot be left open by mistake."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask import (
    Response,
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
from flask_wtf import FlaskForm
from wtforms import SelectChoice, SelectField, StringField
from wtforms.validators import Length, Optional

from portal import i18n, ratelimit
from portal.admin import audit, auth, bp, oidc, operations, queries
from portal.admin.audit import Actor
from portal.admin.forms import (
    AuditFilterForm,
    ConfirmForm,
    CreateUserForm,
    LoginForm,
    OrderSearchForm,
    ReasonForm,
    RefundForm,
    SignOutForm,
    UpdateUserForm,
)
from portal.api import queries as webhook_log
from portal.api import webhooks_out
from portal.config import Settings, declarations
from portal.models import Order, Role
from portal.money import (
    MoneyError,
    format_amount_input,
    format_money,
    parse_amount,
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
        "platform_label": lambda name: _platform_labels().get(name, name),
    }


def _platform_labels() -> dict[str, str]:
    return {name: p.label or name for name, p in services().platforms.items()}


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
    return render_template("admin/dashboard.html", board=queries.dashboard())


# --- orders ------------------------------------------------------------------------------------


def _search_form() -> OrderSearchForm:
    form = OrderSearchForm(formdata=request.args)
    form.platform.choices = [SelectChoice("", "any")] + [
        SelectChoice(name, label) for name, label in sorted(_platform_labels().items())
    ]
    return form


def _filters(form: OrderSearchForm) -> queries.OrderFilters:
    return queries.OrderFilters(
        platform=form.platform.data or None,
        platform_ref=form.platform_ref.data or None,
        email=form.email.data or None,
        stripe_id=form.stripe_id.data or None,
        state=form.state.data or None,
        date_from=form.date_from.data,
        date_to=form.date_to.data,
    )


def _page_number() -> int:
    try:
        return max(1, int(request.args.get("page", "1")))
    except ValueError:
        return 1


@bp.get("/orders")
@auth.requires("orders")
def orders():
    form = _search_form()
    valid = form.validate()
    found = queries.search_orders(_filters(form), _page_number()) if valid else None
    args = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template("admin/orders.html", form=form, found=found, args=args), (
        200 if valid else 400
    )


@bp.get("/orders.csv")
@auth.requires("orders")
def orders_csv():
    form = _search_form()
    if not form.validate():
        abort(400)
    filters = _filters(form)
    audit.record(actor(), "orders.export", detail={"filters": filters.as_dict()})
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Response(
        queries.export_orders(filters),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="orders-{stamp}.csv"'},
    )


def _order_or_404(reference: str) -> Order:
    detail = queries.order_detail(reference)
    if detail is None:
        abort(404)
    return detail.order


@bp.get("/orders/<reference>")
@auth.requires("orders")
def order(reference):
    detail = queries.order_detail(reference)
    if detail is None:
        abort(404)
    return render_template(
        "admin/order.html",
        order=detail.order,
        events=detail.events,
        jobs=detail.jobs,
        offers=operations.offers(detail.order),
        deliveries=webhook_log.deliveries_for_order(detail.order.id),
    )


def _run(action, reference: str):
    """Run an operator action and report it on the order page."""
    try:
        result = action()
    except operations.ActionRefused as exc:
        flash(str(exc), "error")
    else:
        flash(result.message, "ok" if result.ok else "warning")
    return redirect(url_for("admin.order", reference=reference), 303)


ACTION_PAGES = {
    "retry": (
        "Retry fulfilment now",
        "The fulfilment job becomes due now and runs at once; the page waits a few seconds for "
        "the platform's answer. A fulfil_failed order goes back to paid and gets a fresh set of "
        "attempts.",
    ),
    "refund": (
        "Refund",
        "The money goes back through Stripe to the learner's card, then the platform is told. "
        "A partial refund is only for a fulfilled order.",
    ),
    "cancel": (
        "Cancel the order",
        "The Stripe Checkout Session is expired first, so it can no longer be paid; then the "
        "platform is told the purchase was cancelled.",
    ),
    "resolve": (
        "Mark as resolved",
        "Use this when the learner was enrolled by hand on the platform: the order becomes "
        "fulfilled, and the reason is kept on its timeline. Nothing is sent to the platform.",
    ),
}


def _action_page(action: str, order: Order, form, status: int = 200, refused: str | None = None):
    title, explanation = ACTION_PAGES[action]
    remaining = (order.amount_paid_minor or 0) - (order.amount_refunded_minor or 0)
    return render_template(
        "admin/action.html",
        action=action,
        title=title,
        explanation=explanation,
        order=order,
        form=form,
        remaining=remaining,
        refund_effects=services().platform(order.platform).refund_effects,
        refused=refused,
        amount_example=format_amount_input(max(remaining, 0), order.currency, operator_locale()),
    ), status


def operator_locale() -> str:
    """The operator's locale, from their browser: amounts are typed and shown as they write
    them ("50,00" in French)."""
    return i18n.negotiate(None, request.accept_languages, "en")


@bp.route("/orders/<reference>/retry", methods=["GET", "POST"])
@auth.requires("orders.act")
def retry(reference):
    order = _order_or_404(reference)
    form = ConfirmForm()
    if form.validate_on_submit():
        return _run(lambda: operations.retry_fulfilment(services(), actor(), reference), reference)
    return _action_page("retry", order, form, 400 if request.method == "POST" else 200)


@bp.route("/orders/<reference>/refund", methods=["GET", "POST"])
@auth.requires("orders.act")
def refund(reference):
    order = _order_or_404(reference)
    form = RefundForm()
    locale = operator_locale()
    if request.method == "GET":
        remaining = (order.amount_paid_minor or 0) - (order.amount_refunded_minor or 0)
        form.amount.data = format_amount_input(max(remaining, 0), order.currency, locale)
        form.refunded_before.data = order.amount_refunded_minor or 0
    refused = None
    if form.validate_on_submit():
        try:
            amount_minor = parse_amount(form.amount.data, order.currency, locale)
        except MoneyError as exc:
            form.amount.errors = [*form.amount.errors, str(exc)]
        else:
            reason = form.reason.data.strip()
            before = form.refunded_before.data
            try:
                result = operations.refund(
                    services(), actor(), reference, amount_minor, reason, expected_refunded=before
                )
            except operations.ActionRefused as exc:
                # Refused (over what is left, say): the same form again, with what was typed.
                refused = str(exc)
            else:
                flash(result.message, "ok" if result.ok else "warning")
                return redirect(url_for("admin.order", reference=reference), 303)
    status = 400 if request.method == "POST" else 200
    return _action_page("refund", order, form, status, refused=refused)


@bp.route("/orders/<reference>/cancel", methods=["GET", "POST"])
@auth.requires("orders.act")
def cancel(reference):
    order = _order_or_404(reference)
    form = ReasonForm()
    if form.validate_on_submit():
        reason = form.reason.data.strip()
        return _run(lambda: operations.cancel(services(), actor(), reference, reason), reference)
    return _action_page("cancel", order, form, 400 if request.method == "POST" else 200)


@bp.route("/orders/<reference>/resolve", methods=["GET", "POST"])
@auth.requires("orders.act")
def resolve(reference):
    order = _order_or_404(reference)
    form = ReasonForm()
    if form.validate_on_submit():
        reason = form.reason.data.strip()
        return _run(lambda: operations.resolve(services(), actor(), reference, reason), reference)
    return _action_page("resolve", order, form, 400 if request.method == "POST" else 200)


# --- merchant webhook deliveries ----------------------------------------------------------------


class DeliveryFilterForm(FlaskForm):
    """The delivery log's filters: a GET form, without a CSRF token (it changes nothing)."""

    class Meta:
        csrf = False

    state = SelectField(
        "State",
        choices=[SelectChoice("", "any")] + [SelectChoice(s) for s in webhook_log.STATES],
        validators=[Optional()],
    )
    event_type = SelectField(
        "Event type",
        choices=[SelectChoice("", "any")] + [SelectChoice(t) for t in webhooks_out.EVENT_TYPES],
        validators=[Optional()],
    )
    order = StringField("Order reference", validators=[Optional(), Length(max=40)])
    event = StringField("Event id", validators=[Optional(), Length(max=64)])
    key = SelectField("API key", choices=[], validators=[Optional()])
    endpoint = SelectField("Endpoint", choices=[], validators=[Optional()])


def _delivery_filter_form() -> DeliveryFilterForm:
    form = DeliveryFilterForm(formdata=request.args)
    keys: dict[str, str] = {}
    endpoint_choices = []
    for choice in webhook_log.endpoints():
        revoked = " (revoked)" if choice.api_key_revoked else ""
        keys[str(choice.api_key_id)] = f"{choice.api_key_name} · {choice.api_key_prefix}{revoked}"
        endpoint_choices.append(
            SelectChoice(str(choice.id), f"{choice.url} · {choice.api_key_prefix}")
        )
    form.key.choices = [SelectChoice("", "any")] + [SelectChoice(k, v) for k, v in keys.items()]
    form.endpoint.choices = [SelectChoice("", "any")] + endpoint_choices
    return form


def _delivery_filters(form: DeliveryFilterForm) -> webhook_log.DeliveryFilters:
    return webhook_log.DeliveryFilters(
        state=form.state.data or None,
        order_reference=form.order.data or None,
        api_key_id=int(form.key.data) if form.key.data else None,
        endpoint_id=int(form.endpoint.data) if form.endpoint.data else None,
        event_type=form.event_type.data or None,
        event_id=form.event.data or None,
    )


@bp.get("/webhooks")
@auth.requires("orders")
def webhook_deliveries():
    form = _delivery_filter_form()
    valid = form.validate()
    found = (
        queries.search_webhook_deliveries(_delivery_filters(form), _page_number())
        if valid
        else None
    )
    args = {k: v for k, v in request.args.items() if k != "page" and v}
    filtered = any(k in args for k in form.data)
    return render_template(
        "admin/webhook_deliveries.html", form=form, found=found, args=args, filtered=filtered
    ), (200 if valid else 400)


def _delivery_or_404(delivery_id: int) -> webhook_log.DeliveryDetail:
    detail = webhook_log.delivery_detail(delivery_id)
    if detail is None:
        abort(404)
    return detail


@bp.get("/webhooks/<int:delivery_id>")
@auth.requires("orders")
def webhook_delivery(delivery_id):
    return render_template("admin/webhook_delivery.html", detail=_delivery_or_404(delivery_id))


@bp.route("/webhooks/<int:delivery_id>/resend", methods=["GET", "POST"])
@auth.requires("orders.act")
def webhook_resend(delivery_id):
    detail = _delivery_or_404(delivery_id)
    form = ConfirmForm()
    form.confirm.label.text = "I have checked the delivery and want it sent again"
    if form.validate_on_submit():
        try:
            result = operations.resend_webhook(actor(), delivery_id)
        except operations.ActionRefused as exc:
            flash(str(exc), "error")
        else:
            flash(result.message, "ok" if result.ok else "warning")
        return redirect(url_for("admin.webhook_delivery", delivery_id=delivery_id), 303)
    return render_template("admin/webhook_resend.html", detail=detail, form=form), (
        400 if request.method == "POST" else 200
    )


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
    found = queries.audit_log(form.actor.data or None, form.action.data or None, _page_number())
    args = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template("admin/audit.html", form=form, found=found, args=args)
