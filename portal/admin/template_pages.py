"""Console pages of the marketers' template editor (permission `branding`): edit an override of a
learner template or email, check it, preview it in every sample state, publish, history with diffs,
one-click rollback, back to the default. The writes are in portal/branding/overrides.py; every one
is audited. Brands and their assignments are in `portal.admin.branding`."""

from __future__ import annotations

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import (
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, Optional

from portal import i18n
from portal.admin import auth, bp
from portal.admin.branding import EMAIL_PREVIEW_CSP, ConfirmOnlyForm, VersionForm
from portal.admin.routes import actor
from portal.branding import operations, overrides, samples
from portal.branding.environment import default_source, learner_template_names
from portal.branding.overrides import preview_email


class TemplateForm(FlaskForm):
    source = TextAreaField("Override source", validators=[DataRequired(), Length(max=65536)])
    note = StringField("What changed", validators=[Optional(), Length(max=300)])
    brand_id = SelectField(
        "For",
        coerce=int,
        choices=[],
        default=0,
        description="Every brand, or one brand only (its pages use its own version first).",
    )


def _template_or_404(name: str) -> str:
    if not overrides.editable(name) or name not in learner_template_names():
        abort(404)
    return name


STARTER = """{%% extends "default:%s" %%}
{#- Override blocks of the default page here; whatever you leave out stays as it is. -#}
"""


@bp.route("/branding/templates/<path:name>", methods=["GET", "POST"])
@auth.requires("branding")
def edit_template(name):
    name = _template_or_404(name)
    history = overrides.history(name)
    form = TemplateForm()
    all_brands = operations.brands()
    form.brand_id.choices = [SelectChoice(0, "Every brand")] + [
        SelectChoice(b.id, f"{b.name} only") for b in all_brands
    ]
    problems = None
    status = 200
    if request.method == "POST":
        if form.validate_on_submit():
            row = overrides.save_draft(
                actor(), name, form.source.data, form.note.data, form.brand_id.data or None
            )
            problems = overrides.blocking(overrides.check(name, row.source, row.brand_id))
            if problems:
                flash(
                    f"Version {row.version} saved as a draft, with problems to fix before it "
                    "can be published.",
                    "warning",
                )
            else:
                flash(f"Version {row.version} saved and checked: ready to publish.", "ok")
            return redirect(url_for("admin.edit_template", name=name, version=row.version), 303)
        status = 400
    selected = None
    number = request.args.get("version", type=int)
    if number is not None:
        selected = next((h for h in history if h.version == number), None)
    elif history:
        selected = history[0]
    if request.method == "GET":
        form.source.data = selected.source if selected else STARTER % name
        form.note.data = ""
        form.brand_id.data = (selected.brand_id if selected else None) or 0
    warnings = []
    if selected is not None and problems is None:
        found = overrides.check(name, selected.source, selected.brand_id)
        problems = overrides.blocking(found)
        warnings = [p for p in found if p.warning]
    compare = None
    if selected is not None:
        earlier = [h for h in history if h.version < selected.version]
        if earlier:
            base = earlier[0]
            compare = (
                base.version,
                overrides.diff(
                    base.source, selected.source, f"v{base.version}", f"v{selected.version}"
                ),
            )
        else:
            compare = (None, overrides.diff("", selected.source, "(none)", f"v{selected.version}"))
    return render_template(
        "admin/template_editor.html",
        name=name,
        form=form,
        history=history,
        selected=selected,
        problems=problems or [],
        warnings=warnings,
        compare=compare,
        samples=samples.samples_for(name),
        languages=i18n.languages(),
        brands=all_brands,
        brand_names={b.id: b.name for b in all_brands},
        version_form=VersionForm(),
        default_source=default_source(name),
    ), status


@bp.get("/branding/templates/<path:name>/preview")
@auth.requires("branding")
def preview_template(name):
    name = _template_or_404(name)
    key = request.args.get("state") or samples.samples_for(name)[0].key
    language = request.args.get("lang", "en")
    if language not in i18n.languages():
        language = "en"
    number = request.args.get("version", type=int)
    source = None
    if number is not None:
        row = overrides.version(name, number)
        if row is None:
            abort(404)
        source = row.source
    brand_id = request.args.get("brand", type=int) or (row.brand_id if number is not None else None)
    sample = samples.sample(key)
    email = sample is not None and sample.template.startswith("email/")
    try:
        if email:
            html = preview_email(name, source, sample, language, brand_id)
        else:
            html = overrides.preview(name, source, key, language, brand_id)
    except overrides.UnsafeOutput as exc:
        # Never shown: the draft's markup would run on this console page.
        return render_template(
            "admin/template_preview_error.html",
            name=name,
            number=number,
            error="This draft renders markup learners may not receive, so it is not shown.",
            problems=exc.problems,
        ), 422
    except overrides.OverrideError:
        abort(404)
    except Exception as exc:  # noqa: BLE001 - the marketer sees what broke, with its line
        from portal.branding.render import describe

        return render_template(
            "admin/template_preview_error.html", name=name, number=number, error=describe(exc, name)
        ), 422
    response = Response(html, mimetype="text/html")
    if email:
        # An email's look is inline styles (mail clients drop stylesheets): allowed here, in a
        # sandboxed document that can run nothing and load images from our origin only.
        response.headers["Content-Security-Policy"] = EMAIL_PREVIEW_CSP
    return response


def _version_action(name: str, action):
    name = _template_or_404(name)
    form = VersionForm()
    if not form.validate_on_submit():
        flash("Choose a version.", "error")
        return redirect(url_for("admin.edit_template", name=name), 303)
    try:
        row = action(actor(), name, form.version.data)
    except overrides.OverrideError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.edit_template", name=name, version=form.version.data), 303)
    return row, name


@bp.post("/branding/templates/<path:name>/publish")
@auth.requires("branding")
def publish_template(name):
    result = _version_action(name, overrides.publish)
    if not isinstance(result, tuple):
        return result
    row, name = result
    flash(f"Version {row.version} of {name} is live.", "ok")
    return redirect(url_for("admin.edit_template", name=name, version=row.version), 303)


@bp.post("/branding/templates/<path:name>/rollback")
@auth.requires("branding")
def rollback_template(name):
    result = _version_action(name, overrides.rollback)
    if not isinstance(result, tuple):
        return result
    row, name = result
    flash(f"Rolled back: version {row.version} ({row.note}) is live.", "ok")
    return redirect(url_for("admin.edit_template", name=name, version=row.version), 303)


@bp.post("/branding/templates/<path:name>/default")
@auth.requires("branding")
def default_template(name):
    name = _template_or_404(name)
    if ConfirmOnlyForm().validate_on_submit():
        overrides.use_default(actor(), name)
        flash(f"{name}: learners see the default template again.", "ok")
    return redirect(url_for("admin.edit_template", name=name), 303)
