"""Console views of orders: search and CSV export, an order's page with its timeline, and the
operator actions on it (retry, refund, cancel, resolve), each behind a confirmation page."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import (
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from wtforms import SelectChoice

from portal import i18n
from portal.admin import audit, auth, bp, operations, queries
from portal.admin.forms import (
    ConfirmForm,
    OrderSearchForm,
    ReasonForm,
    RefundForm,
)
from portal.admin.routes import actor, page_number, platform_labels, services
from portal.api import queries as webhook_log
from portal.models import Order
from portal.money import (
    MoneyError,
    format_amount_input,
    parse_amount,
)

# --- orders ------------------------------------------------------------------------------------


def _search_form() -> OrderSearchForm:
    form = OrderSearchForm(formdata=request.args)
    form.platform.choices = [SelectChoice("", "any")] + [
        SelectChoice(name, label) for name, label in sorted(platform_labels().items())
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


@bp.get("/orders")
@auth.requires("orders")
def orders():
    form = _search_form()
    valid = form.validate()
    found = queries.search_orders(_filters(form), page_number()) if valid else None
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
