"""Marketers' template overrides: check a draft (syntax, then a render of every sample page that
uses it, in every language, with line numbers), save versions, publish, roll back, go back to
the default, compare versions. Every write is audited; nothing here reads `request`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from html import escape

from flask import current_app, url_for
from jinja2 import TemplateNotFound, TemplateSyntaxError
from sqlalchemy import func, select, update

from portal import i18n
from portal.admin import audit
from portal.admin.audit import Actor
from portal.branding import brands, markup, samples
from portal.branding import cache as branding_cache
from portal.branding.emails import (
    email_colours,
    email_context,
    email_rules,
    public_url_for,
    text_part,
)
from portal.branding.environment import ACTIVE_MARKUP, fixed_environment, is_learner_template
from portal.branding.render import (
    describe,
    for_brand,
    load_overrides,
    page_context,
    page_rules,
    render_in,
)
from portal.db import db
from portal.models import Brand, TemplateOverride, utcnow

SOURCE_MAX = 64 * 1024


class OverrideError(Exception):
    """The action is refused; the message says why."""


@dataclass
class Problem:
    where: str  # the sample (or "syntax")
    message: str
    # A warning (text a learner would read in another language) is listed, and does not
    # stop publishing.
    warning: bool = False


def blocking(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if not p.warning]


def editable(name: str) -> bool:
    """Templates a marketer may override: everything portal.branding renders for learners (the
    pages, the Cleeng review page, the pay-link and receipt emails), never the console's or the
    sandbox's."""
    return is_learner_template(name) and name.split("/")[0] not in {"api"}


def _preview_csrf() -> str:
    return "preview-token"


def sample_context(sample: samples.Sample, language: str, brand: dict) -> dict:
    locale = {"en": "en_US", "fr": "fr_FR"}.get(language, language)
    return page_context(
        brand=brand,
        locale=locale,
        order=sample.order,
        context=sample.context,
        preview=True,
        csrf_token=_preview_csrf,
    )


def check(name: str, source: str, brand_id: int | None = None) -> list[Problem]:
    """Every problem publishing `source` as the override of `name` would cause: its syntax,
    then, for every sample page that uses it, in every language and for every brand, what it
    renders: errors (with line numbers), the render budget, and the output itself against the
    default's (portal.branding.markup: allowed markup only, the locked checkout parts kept)."""
    if len(source) > SOURCE_MAX:
        return [Problem("size", f"The template is longer than {SOURCE_MAX // 1024} KB.")]
    found = ACTIVE_MARKUP.search(source)
    if found:
        line = source.count("\n", 0, found.start()) + 1
        return [
            Problem(
                "markup",
                f"{name}, line {line}: scripts, frames, forms, <base>, <meta> and event "
                f"handlers are not allowed in an override ({found.group(0).strip()!r}).",
            )
        ]
    env = fixed_environment("en", {name: source})
    try:
        env.parse(source, name=name)
    except TemplateSyntaxError as exc:
        return [Problem("syntax", describe(exc, name))]
    problems: list[Problem] = []
    warnings: list[Problem] = []
    seen: set[str] = set()
    source_language = i18n.languages()[0]
    for brand_row in _brands_to_check(brand_id):
        in_source_language: dict[str, str] = {}
        for language in i18n.languages():
            env = fixed_environment(language, {name: source})
            default_env = fixed_environment(language, {})
            for sample in samples.samples_for(name):
                where = f"{sample.label} ({language}{_brand_label(brand_row)})"
                try:
                    html, rules = render_sample(env, sample, language, brand_row)
                except TemplateNotFound as exc:
                    problems.append(Problem(where, f"{name}: no template named {exc.name!r}"))
                except Exception as exc:  # noqa: BLE001 - every failure is the marketer's to see
                    problems.append(Problem(where, describe(exc, name)))
                else:
                    default, _rules = render_sample(default_env, sample, language, brand_row)
                    if sample.template.endswith(".txt"):
                        for message in markup.text_problems(html, default, rules):
                            if message not in seen:
                                seen.add(message)
                                problems.append(Problem(where, message))
                        continue
                    for message in markup.problems(html, default, rules):
                        if message not in seen:
                            seen.add(message)
                            problems.append(Problem(where, message))
                    if language == source_language:
                        in_source_language[sample.key] = html
                    elif sample.key in in_source_language and len(warnings) < 20:
                        english = markup.untranslated(html, in_source_language[sample.key], default)
                        if english:
                            warnings.append(
                                Problem(where, _mixed_language(language, english), warning=True)
                            )
                if len(problems) >= 10:
                    return problems + warnings
    return problems + warnings


def _mixed_language(language: str, texts: list[str]) -> str:
    shown = ", ".join(repr(t if len(t) <= 60 else t[:59] + "…") for t in texts[:4])
    more = f" and {len(texts) - 4} more" if len(texts) > 4 else ""
    return (
        f"Learners reading {language} would see this text in English: {shown}{more}. Give "
        f'it per language ({{% if lang == "{language}" %}}…{{% else %}}…{{% endif %}}), '
        "or use the default's own wording."
    )


def _brands_to_check(brand_id: int | None = None) -> list[Brand | None]:
    """The override's brand; for an override of every brand, every brand (or the settings
    brand if there is none)."""
    with db.reader() as session:
        if brand_id is not None:
            row = session.get(Brand, brand_id)
            return [row] if row is not None else []
        rows = list(session.scalars(select(Brand).order_by(Brand.id)))
    return rows or [None]


def _brand_label(row: Brand | None) -> str:
    return f", brand {row.name}" if row is not None else ""


def render_sample(env, sample: samples.Sample, language: str, brand_row: Brand | None):
    """(HTML, markup rules) of a sample page or email for a brand, in `env`."""
    settings = current_app.config["PORTAL"]
    if sample.template.startswith("email/"):
        brand = brands.brand_context(brand_row, settings, public_url_for(settings))
        locale = {"en": "en_US", "fr": "fr_FR"}.get(language, language)
        context = email_context(
            settings=settings,
            brand=brand,
            colours=email_colours(brand_row),
            locale=locale,
            order=sample.order,
            context=sample.context,
            preview=True,
        )
        return render_in(env, sample.template, context, {}), email_rules(settings, brand)
    brand = brands.brand_context(brand_row, settings, url_for)
    html = render_in(env, sample.template, sample_context(sample, language, brand), {})
    return html, page_rules()


class UnsafeOutput(OverrideError):
    """The draft renders markup learners may not receive; `problems` says what."""

    def __init__(self, problems: list[str]):
        super().__init__(" ".join(problems))
        self.problems = problems


def preview(name: str, source: str | None, sample_key: str, language: str, brand_id=None) -> str:
    """The sample page with `source` as the override of `name` (the live defaults if None). A
    draft whose output would be refused is not shown (UnsafeOutput): the preview is a console
    page, and its markup would run there."""
    sample = samples.sample(sample_key)
    if sample is None:
        raise OverrideError("No such sample page.")
    settings = current_app.config["PORTAL"]
    with db.reader() as session:
        brand_row = session.get(Brand, brand_id) if brand_id else None
        if brand_row is None:
            brand_row = brands.find_brand(session, None)
    brand = brands.brand_context(brand_row, settings, url_for)
    env = fixed_environment(language, {name: source} if source is not None else {})
    html = render_in(env, sample.template, sample_context(sample, language, brand), {})
    if source is not None:
        default = render_in(
            fixed_environment(language, {}),
            sample.template,
            sample_context(sample, language, brand),
            {},
        )
        found = markup.problems(html, default, page_rules())
        if found:
            raise UnsafeOutput(found)
    return html


def preview_brand(draft: Brand, sample_key: str, language: str, theme_url: str, logo_url):
    """A sample page or email in a brand version not yet live (`draft`, from
    operations.draft_brand), with the live templates; its stylesheet and logo from the
    console's draft URLs."""
    sample = samples.sample(sample_key)
    if sample is None:
        raise OverrideError("No such sample page.")
    settings = current_app.config["PORTAL"]
    overrides = for_brand(load_overrides(), draft.id)
    env = fixed_environment(language, {name: source for name, (_i, source) in overrides.items()})
    if sample.template.startswith("email/"):
        brand = brands.brand_context(draft, settings, public_url_for(settings))
        brand["logo_url"] = logo_url
        context = email_context(
            settings=settings,
            brand=brand,
            colours=email_colours(draft),
            locale={"en": "en_US", "fr": "fr_FR"}.get(language, language),
            order=sample.order,
            context=sample.context,
            preview=True,
        )
        return render_in(env, sample.template, context, {}), True
    brand = brands.brand_context(draft, settings, url_for)
    brand["theme_url"], brand["logo_url"] = theme_url, logo_url
    return render_in(env, sample.template, sample_context(sample, language, brand), {}), False


def preview_email(name: str, source: str | None, sample, language: str, brand_id=None) -> str:
    """The console's preview of an email sample with `source` as the override of `name` (the
    live defaults if None), in the colours of brand `brand_id` (else the default brand). A
    plain-text message is shown as it reads, in a <pre>."""
    settings = current_app.config["PORTAL"]
    with db.reader() as session:
        row = session.get(Brand, brand_id) if brand_id else None
        if row is None:
            row = brands.find_brand(session, None)
        # Relative logo URLs: the preview is a console page, on the console's own origin.
        brand = brands.brand_context(row, settings, url_for)
        colours = email_colours(row)
    locale = {"en": "en_US", "fr": "fr_FR"}.get(language, language)
    context = email_context(
        settings=settings,
        brand=brand,
        colours=colours,
        locale=locale,
        order=sample.order,
        context=sample.context,
        preview=True,
    )
    env = fixed_environment(language, {name: source} if source is not None else {})
    rendered = render_in(env, sample.template, context, {})
    if not sample.template.endswith(".txt"):
        if source is not None:
            default = render_in(fixed_environment(language, {}), sample.template, context, {})
            found = markup.problems(rendered, default, email_rules(settings, brand))
            if found:
                raise UnsafeOutput(found)
        return rendered
    return (
        f'<!doctype html>\n<html lang="{language}">\n<head><meta charset="utf-8">'
        f"<title>Preview: {escape(sample.template)}</title></head>\n"
        '<body style="margin:0;padding:24px;background:#f3f5f9;">\n'
        '<pre style="margin:0 auto;max-width:72ch;padding:24px;background:#ffffff;'
        "border:1px solid #d8dee4;border-radius:8px;white-space:pre-wrap;overflow-wrap:anywhere;"
        'font:14px/1.5 ui-monospace,Menlo,Consolas,monospace;color:#16192b;">'
        f"{escape(text_part(rendered))}</pre>\n</body>\n</html>\n"
    )


# --- versions ---------------------------------------------------------------------------------


def history(name: str) -> list[TemplateOverride]:
    with db.reader() as session:
        return list(
            session.scalars(
                select(TemplateOverride)
                .where(TemplateOverride.template_name == name)
                .order_by(TemplateOverride.version.desc())
            )
        )


def version(name: str, number: int) -> TemplateOverride | None:
    with db.reader() as session:
        return session.scalar(
            select(TemplateOverride).where(
                TemplateOverride.template_name == name, TemplateOverride.version == number
            )
        )


def overview() -> dict[str, dict]:
    """Per template: the number of versions, the live version and its last failure."""
    with db.reader() as session:
        rows = session.scalars(select(TemplateOverride).order_by(TemplateOverride.version))
        result: dict[str, dict] = {}
        for row in rows:
            entry = result.setdefault(row.template_name, {"versions": 0, "live": None})
            entry["versions"] += 1
            if row.published:
                entry["live"] = row
    return result


def diff(old: str, new: str, old_label: str, new_label: str) -> list[str]:
    return list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), old_label, new_label, lineterm="", n=2
        )
    )


def _next_version(session, name: str) -> int:
    latest = session.scalar(
        select(func.max(TemplateOverride.version)).where(TemplateOverride.template_name == name)
    )
    return (latest or 0) + 1


def save_draft(
    actor: Actor, name: str, source: str, note: str | None, brand_id: int | None = None
) -> TemplateOverride:
    """A new version of the override of `name`, for brand `brand_id` (None: every brand)."""
    if not editable(name):
        raise OverrideError("That template cannot be overridden.")
    source = source.replace("\r\n", "\n")
    with db.transaction() as session:
        if brand_id is not None and session.get(Brand, brand_id) is None:
            raise OverrideError("No such brand.")
        row = TemplateOverride(
            template_name=name,
            version=_next_version(session, name),
            source=source,
            author=actor.email,
            note=(note or "").strip()[:300] or None,
            brand_id=brand_id,
            published=False,
        )
        session.add(row)
        session.flush()
        audit.record(
            actor,
            "template.save",
            target=f"{name} v{row.version}",
            detail={"template": name, "version": row.version, "brand_id": brand_id},
            session=session,
        )
    return row


def _make_live(session, name: str, row_id: int | None, brand_id: int | None = None) -> None:
    """Version `row_id` becomes the live one of its scope (brand `brand_id`, or every brand);
    None takes that scope's live version down."""
    scope = (
        TemplateOverride.brand_id.is_(None)
        if brand_id is None
        else TemplateOverride.brand_id == brand_id
    )
    session.execute(
        update(TemplateOverride)
        .where(
            TemplateOverride.template_name == name,
            TemplateOverride.published.is_(True),
            scope,
        )
        .values(published=False)
    )
    if row_id is not None:
        session.execute(
            update(TemplateOverride)
            .where(TemplateOverride.id == row_id)
            .values(published=True, published_at=utcnow(), failure_count=0, last_failure=None)
        )


def publish(actor: Actor, name: str, number: int) -> TemplateOverride:
    """Make version `number` live, if it checks clean."""
    row = version(name, number)
    if row is None:
        raise OverrideError("No such version.")
    problems = blocking(check(name, row.source, row.brand_id))
    if problems:
        audit.record(
            actor,
            "template.publish",
            "refused",
            target=f"{name} v{number}",
            detail={"problems": [p.message for p in problems[:5]]},
        )
        raise OverrideError(
            f"Version {number} has {len(problems)} problem(s) and cannot be published: "
            + problems[0].message
        )
    with db.transaction() as session:
        _make_live(session, name, row.id, row.brand_id)
        audit.record(
            actor,
            "template.publish",
            target=f"{name} v{number}",
            detail={"template": name, "version": number},
            session=session,
        )
    branding_cache.forget()
    return row


def rollback(actor: Actor, name: str, number: int) -> TemplateOverride:
    """One click back to an earlier version: a new version with its source goes live (history
    stays append-only, so the rollback itself shows who did it and when)."""
    old = version(name, number)
    if old is None:
        raise OverrideError("No such version.")
    if blocking(check(name, old.source, old.brand_id)):
        raise OverrideError(f"Version {number} no longer checks clean: open it and fix it.")
    with db.transaction() as session:
        row = TemplateOverride(
            template_name=name,
            version=_next_version(session, name),
            source=old.source,
            author=actor.email,
            note=f"Rollback to version {number}",
            brand_id=old.brand_id,
            published=False,
        )
        session.add(row)
        session.flush()
        _make_live(session, name, row.id, old.brand_id)
        audit.record(
            actor,
            "template.rollback",
            target=f"{name} v{number}",
            detail={"template": name, "to_version": number, "new_version": row.version},
            session=session,
        )
    branding_cache.forget()
    return row


def use_default(actor: Actor, name: str) -> None:
    """Take the override down, for every brand: learners see the default template again."""
    with db.transaction() as session:
        session.execute(
            update(TemplateOverride)
            .where(TemplateOverride.template_name == name, TemplateOverride.published.is_(True))
            .values(published=False)
        )
        audit.record(actor, "template.default", target=name, session=session)
    branding_cache.forget()
