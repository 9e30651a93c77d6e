"""Console views of the merchants' webhook deliveries: the log, one delivery with its attempts,
and sending one again."""

from __future__ import annotations

from flask import (
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf import FlaskForm
from wtforms import SelectChoice, SelectField, StringField
from wtforms.validators import Length, Optional

from portal.admin import auth, bp, operations, queries
from portal.admin.forms import (
    ConfirmForm,
)
from portal.admin.routes import actor, page_number
from portal.api import queries as webhook_log
from portal.api import webhooks_out

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
        queries.search_webhook_deliveries(_delivery_filters(form), page_number()) if valid else None
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
