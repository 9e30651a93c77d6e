"""Console pages of the marketers (permission `branding`): the branding overview, brands (edit,
version, preview, publish) and which platform source gets which. The template editor is in
`portal.admin.template_pages`. The writes are in portal/branding/operations.py; every one is
audited."""

from __future__ import annotations

import base64

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    BooleanField,
    IntegerField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, Optional

from portal import i18n
from portal.admin import auth, bp
from portal.admin.routes import actor
from portal.branding import brands, operations, overrides, samples
from portal.branding.brands import COPY_BLOCKS, DEFAULT_COLOURS, FONT_STACKS, BrandError, BrandInput
from portal.branding.environment import learner_template_names
from portal.config import Settings
from portal.platforms import registry

EMAIL_PREVIEW_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; sandbox"
)


class BrandForm(FlaskForm):
    name = StringField(
        "Name shown to learners",
        validators=[DataRequired(), Length(max=120)],
        description="Plain text on one line, up to 120 characters (it also signs the emails).",
    )
    primary = StringField("Primary colour (buttons, links)", validators=[DataRequired()])
    text = StringField("Text colour", validators=[DataRequired()])
    background = StringField("Page background colour", validators=[DataRequired()])
    accent = StringField("Accent colour (focus ring)", validators=[DataRequired()])
    font_stack = SelectField(
        "Font stack",
        choices=[SelectChoice(key, label) for key, (label, _stack) in FONT_STACKS.items()],
    )
    support_email = StringField("Support email", validators=[Optional(), Length(max=320)])
    terms_url = StringField("Terms address (https)", validators=[Optional(), Length(max=2000)])
    privacy_url = StringField("Privacy address (https)", validators=[Optional(), Length(max=2000)])
    review_intro = TextAreaField(
        COPY_BLOCKS["review_intro"], validators=[Optional()], description=brands.COPY_ACCEPTS
    )
    paid_note = TextAreaField(
        COPY_BLOCKS["paid_note"], validators=[Optional()], description=brands.COPY_ACCEPTS
    )
    footer_note = TextAreaField(
        COPY_BLOCKS["footer_note"], validators=[Optional()], description=brands.COPY_ACCEPTS
    )
    logo = FileField("Logo (PNG or SVG, at most 32 KB)")
    remove_logo = BooleanField("Remove the logo")
    is_default = BooleanField("Default brand (for every source without its own)")
    note = StringField("What changed", validators=[Optional(), Length(max=300)])


# The copy fields in each language besides English: `review_intro_fr`, ... (WTForms binds
# fields set on the class before the first form is made).
COPY_LANGUAGE_FIELDS = {
    language: [f"{key}_{language}" for key in COPY_BLOCKS]
    for language in brands.translated_languages()
}
for _language, _names in COPY_LANGUAGE_FIELDS.items():
    for _key, _name in zip(COPY_BLOCKS, _names, strict=True):
        setattr(
            BrandForm,
            _name,
            TextAreaField(
                f"{COPY_BLOCKS[_key]} ({_language})",
                validators=[Optional()],
                description=f"{brands.COPY_ACCEPTS} Empty: the English text is shown.",
            ),
        )


def _copy_of(form: BrandForm) -> dict[str, str]:
    copy = {key: form[key].data for key in COPY_BLOCKS}
    for language in COPY_LANGUAGE_FIELDS:
        for key in COPY_BLOCKS:
            copy[brands.copy_key(key, language)] = form[f"{key}_{language}"].data
    return copy


def _platform_choices() -> list:
    return [SelectChoice(name) for name in registry.names()]


def _source_help() -> str:
    """What a source is, for each platform that has several (`PlatformSpec.brand_source_help`)."""
    kinds = [spec.brand_source_help for spec in registry.installed() if spec.brand_source_help]
    return "; ".join(["* for every source of the platform", *kinds]) + "."


class AssignForm(FlaskForm):
    platform = SelectField("Platform", choices=_platform_choices)
    source_key = StringField("Source", validators=[Optional(), Length(max=190)])
    brand_id = SelectField("Brand", coerce=int, choices=[])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.source_key.description = _source_help()


class VersionForm(FlaskForm):
    version = IntegerField(validators=[DataRequired()])


class ConfirmOnlyForm(FlaskForm):
    """The CSRF token only."""


@bp.get("/branding")
@auth.requires("branding")
def branding():
    assign_form = AssignForm()
    all_brands = operations.brands()
    assign_form.brand_id.choices = [SelectChoice(b.id, b.name) for b in all_brands]
    state = overrides.overview()
    templates = [
        {"name": name, **state.get(name, {"versions": 0, "live": None})}
        for name in learner_template_names()
        if overrides.editable(name)
    ]
    return render_template(
        "admin/branding.html",
        brands=all_brands,
        assignments=operations.assignments(),
        assign_form=assign_form,
        remove_form=ConfirmOnlyForm(),
        templates=templates,
        settings_brand=brands.settings_brand(bp_settings()),
    )


def bp_settings() -> Settings:
    from flask import current_app

    return current_app.config["PORTAL"]


def _brand_input(form: BrandForm) -> BrandInput:
    upload = form.logo.data
    data = upload.read(brands.LOGO_MAX_BYTES + 1) if upload else None
    return BrandInput(
        name=form.name.data,
        primary=form.primary.data,
        text=form.text.data,
        background=form.background.data,
        accent=form.accent.data,
        font_stack=form.font_stack.data,
        support_email=form.support_email.data,
        terms_url=form.terms_url.data,
        privacy_url=form.privacy_url.data,
        copy_blocks=_copy_of(form),
        logo=data or None,
        remove_logo=form.remove_logo.data,
        is_default=form.is_default.data,
    )


def _brand_page(form: BrandForm, brand=None, problems=None, status: int = 200):
    # Each problem beside its field, as well as in the summary at the top.
    for key, text in (problems or {}).items():
        name = key.removeprefix("copy_").replace(":", "_")
        if name == "colours":
            name = "primary"
        if name in form:
            form[name].errors = [*form[name].errors, text]
    colours = {
        key: (getattr(form, key).data or "").strip().lower()
        for key in ("primary", "text", "background", "accent")
    }
    checks = None
    if all(brands.HEX_COLOUR.fullmatch(v) for v in colours.values()):
        checks = brands.contrast_checks(colours)
    return (
        render_template(
            "admin/brand.html",
            form=form,
            edited=brand,
            problems=problems or {},
            checks=checks,
            copy_languages=COPY_LANGUAGE_FIELDS,
            untranslated=brands.untranslated_copy(brand.copy_blocks) if brand else [],
            copy_labels=COPY_BLOCKS,
            versions=operations.versions(brand.id) if brand else [],
            selected=_selected_version(brand),
            samples=samples.all_samples(),
            languages=i18n.languages(),
            version_form=VersionForm(),
        ),
        status,
    )


def _selected_version(brand):
    number = request.args.get("version", type=int)
    if brand is None or number is None:
        return None
    return operations.brand_version(brand.id, number)


@bp.route("/branding/brands/new", methods=["GET", "POST"])
@auth.requires("branding")
def new_brand():
    form = BrandForm()
    if request.method == "GET":
        form.primary.data = DEFAULT_COLOURS["primary"]
        form.text.data = DEFAULT_COLOURS["text"]
        form.background.data = DEFAULT_COLOURS["background"]
        form.accent.data = DEFAULT_COLOURS["accent"]
        form.name.data = bp_settings().brand_name
        return _brand_page(form)
    if not form.validate_on_submit():
        return _brand_page(form, status=400)
    try:
        brand = operations.save_brand(actor(), _brand_input(form))
    except BrandError as exc:
        return _brand_page(form, problems=exc.problems, status=400)
    flash(f"Brand {brand.name} saved.", "ok")
    return redirect(url_for("admin.edit_brand", brand_id=brand.id), 303)


@bp.route("/branding/brands/<int:brand_id>", methods=["GET", "POST"])
@auth.requires("branding")
def edit_brand(brand_id):
    brand = operations.get_brand(brand_id)
    if brand is None:
        abort(404)
    if request.method == "GET":
        form = BrandForm(
            formdata=None,
            name=brand.name,
            primary=brand.colour_primary,
            text=brand.colour_text,
            background=brand.colour_background,
            accent=brand.colour_accent,
            font_stack=brand.font_stack,
            support_email=brand.support_email,
            terms_url=brand.terms_url,
            privacy_url=brand.privacy_url,
            is_default=brand.is_default,
            **{key: (brand.copy_blocks or {}).get(key, "") for key in COPY_BLOCKS},
            **{
                f"{key}_{language}": (brand.copy_blocks or {}).get(
                    brands.copy_key(key, language), ""
                )
                for language in COPY_LANGUAGE_FIELDS
                for key in COPY_BLOCKS
            },
        )
        return _brand_page(form, brand)
    form = BrandForm()
    if not form.validate_on_submit():
        return _brand_page(form, brand, status=400)
    try:
        row = operations.save_brand_draft(actor(), _brand_input(form), brand_id, form.note.data)
    except BrandError as exc:
        return _brand_page(form, brand, problems=exc.problems, status=400)
    flash(
        f"Version {row.version} saved as a draft: preview it on every page, then publish it. "
        "Learners still see the live version.",
        "ok",
    )
    return redirect(url_for("admin.edit_brand", brand_id=brand.id, version=row.version), 303)


def _brand_version_or_404(brand_id: int, number: int):
    brand = operations.get_brand(brand_id)
    row = operations.brand_version(brand_id, number) if brand is not None else None
    if row is None:
        abort(404)
    return brand, row


@bp.post("/branding/brands/<int:brand_id>/publish")
@auth.requires("branding")
def publish_brand(brand_id):
    form = VersionForm()
    if not form.validate_on_submit():
        flash("Choose a version.", "error")
        return redirect(url_for("admin.edit_brand", brand_id=brand_id), 303)
    _brand_version_or_404(brand_id, form.version.data)
    try:
        brand = operations.publish_brand_version(actor(), brand_id, form.version.data)
    except BrandError as exc:
        flash("Not published: " + " ".join(exc.problems.values()), "error")
        return redirect(
            url_for("admin.edit_brand", brand_id=brand_id, version=form.version.data), 303
        )
    flash(f"Version {form.version.data} of brand {brand.name} is live.", "ok")
    return redirect(url_for("admin.edit_brand", brand_id=brand_id), 303)


@bp.get("/branding/brands/<int:brand_id>/versions/<int:number>/preview")
@auth.requires("branding")
def preview_brand(brand_id, number):
    brand, row = _brand_version_or_404(brand_id, number)
    draft = operations.draft_brand(brand, row)
    key = request.args.get("state") or "open"
    language = request.args.get("lang", "en")
    if language not in i18n.languages():
        language = "en"
    logo_url = None
    if draft.logo and draft.logo_type in brands.LOGO_TYPES:
        # Inline (img-src allows data:): the draft's logo is not served anywhere yet.
        logo_url = f"data:{draft.logo_type};base64,{base64.b64encode(draft.logo).decode()}"
    theme_url = url_for("admin.brand_version_theme", brand_id=brand_id, number=number)
    try:
        html, email = overrides.preview_brand(draft, key, language, theme_url, logo_url)
    except overrides.OverrideError:
        abort(404)
    response = Response(html, mimetype="text/html")
    if email:
        response.headers["Content-Security-Policy"] = EMAIL_PREVIEW_CSP
    return response


@bp.get("/branding/brands/<int:brand_id>/versions/<int:number>/theme.css")
@auth.requires("branding")
def brand_version_theme(brand_id, number):
    brand, row = _brand_version_or_404(brand_id, number)
    return Response(brands.theme_css(operations.draft_brand(brand, row)), mimetype="text/css")


@bp.post("/branding/assignments")
@auth.requires("branding")
def assign_brand():
    form = AssignForm()
    form.brand_id.choices = [SelectChoice(b.id, b.name) for b in operations.brands()]
    if not form.validate_on_submit():
        flash("Not saved: choose a platform and a brand.", "error")
        return redirect(url_for("admin.branding"), 303)
    try:
        operations.assign(actor(), form.platform.data, form.source_key.data, form.brand_id.data)
    except BrandError as exc:
        flash("Not saved: " + " ".join(exc.problems.values()), "error")
    else:
        flash("Brand assigned.", "ok")
    return redirect(url_for("admin.branding"), 303)


@bp.post("/branding/assignments/<int:assignment_id>/delete")
@auth.requires("branding")
def unassign_brand(assignment_id):
    if ConfirmOnlyForm().validate_on_submit():
        operations.unassign(actor(), assignment_id)
        flash("Assignment removed.", "ok")
    return redirect(url_for("admin.branding"), 303)


# --- the template editor ------------------------------------------------------------------------
