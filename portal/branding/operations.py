"""Brand writes: create and edit brands, choose the default, assign brands to platform sources.
Each checks its input (portal.branding.brands.clean), bumps the brand's version (its stylesheet
and logo URLs change with it) and writes an audit entry in the same transaction.

Brand settings are versioned like templates (`BrandVersion`, append-only): the console saves a
change as a draft (`save_brand_draft`), which can be previewed on every sample page before it
is published (`publish_brand_version`); publishing an earlier version is a rollback. Every save
also records the version that went live."""

from __future__ import annotations

import re
from dataclasses import asdict

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from portal.admin import audit
from portal.admin.audit import Actor
from portal.branding import cache as branding_cache
from portal.branding.brands import BrandError, BrandInput, clean
from portal.db import db
from portal.models import Brand, BrandAssignment, BrandVersion, utcnow
from portal.platforms import registry

SOURCE_KEY = re.compile(r"\*|[A-Za-z0-9._:@-]{1,190}")


def brands() -> list[Brand]:
    with db.reader() as session:
        return list(session.scalars(select(Brand).order_by(Brand.name, Brand.id)))


def get_brand(brand_id: int) -> Brand | None:
    with db.reader() as session:
        return session.get(Brand, brand_id)


def assignments() -> list[tuple[BrandAssignment, str]]:
    with db.reader() as session:
        return list(
            session.execute(
                select(BrandAssignment, Brand.name)
                .join(Brand, Brand.id == BrandAssignment.brand_id)
                .order_by(BrandAssignment.platform, BrandAssignment.source_key)
            )
        )


VERSIONED_FIELDS = (
    "name",
    "primary",
    "text",
    "background",
    "accent",
    "font_stack",
    "support_email",
    "terms_url",
    "privacy_url",
    "copy_blocks",
    "is_default",
    "remove_logo",
)


def _data_of(entry: BrandInput) -> dict:
    values = asdict(entry)
    return {key: values[key] for key in VERSIONED_FIELDS}


def _next_version(session, brand_id: int) -> int:
    latest = session.scalar(
        select(func.max(BrandVersion.version)).where(BrandVersion.brand_id == brand_id)
    )
    return (latest or 0) + 1


def versions(brand_id: int) -> list[BrandVersion]:
    with db.reader() as session:
        return list(
            session.scalars(
                select(BrandVersion)
                .where(BrandVersion.brand_id == brand_id)
                .order_by(BrandVersion.version.desc())
            )
        )


def brand_version(brand_id: int, number: int) -> BrandVersion | None:
    with db.reader() as session:
        return session.scalar(
            select(BrandVersion).where(
                BrandVersion.brand_id == brand_id, BrandVersion.version == number
            )
        )


def draft_brand(brand: Brand, row: BrandVersion) -> Brand:
    """A Brand object, never added to a session, carrying a version's values: what the brand
    would look like once that version is published (for the preview)."""
    data = row.data
    draft = Brand(
        id=brand.id,
        name=data["name"],
        is_default=data["is_default"],
        colour_primary=data["primary"],
        colour_text=data["text"],
        colour_background=data["background"],
        colour_accent=data["accent"],
        font_stack=data["font_stack"],
        support_email=data["support_email"],
        terms_url=data["terms_url"],
        privacy_url=data["privacy_url"],
        copy_blocks=data["copy_blocks"],
        version=brand.version,
    )
    if row.logo:
        draft.logo, draft.logo_type = row.logo, row.logo_type
    elif not data.get("remove_logo"):
        draft.logo, draft.logo_type = brand.logo, brand.logo_type
    return draft


def save_brand_draft(
    actor: Actor, entry: BrandInput, brand_id: int, note: str | None = None
) -> BrandVersion:
    """Check `entry` and keep it as the next version of the brand, not live yet."""
    entry = clean(entry)
    with db.transaction() as session:
        brand = session.get(Brand, brand_id)
        if brand is None:
            raise BrandError({"brand": "No such brand."})
        row = BrandVersion(
            brand_id=brand_id,
            version=_next_version(session, brand_id),
            data=_data_of(entry),
            logo=entry.logo,
            logo_type=entry.logo_type if entry.logo else None,
            author=actor.email,
            note=(note or "").strip()[:300] or None,
        )
        session.add(row)
        session.flush()
        audit.record(
            actor,
            "brand.draft",
            target=f"brand {brand_id}: {entry.name} v{row.version}",
            detail={"brand_id": brand_id, "version": row.version},
            session=session,
        )
    return row


def publish_brand_version(actor: Actor, brand_id: int, number: int) -> Brand:
    """Make version `number` live: its values are checked again and copied onto the brand. A
    version published before goes live again as a new version (a rollback: the history stays
    append-only and says who rolled back when)."""
    row = brand_version(brand_id, number)
    if row is None:
        raise BrandError({"version": "No such version."})
    with db.reader() as session:
        brand = session.get(Brand, brand_id)
    if brand is None:
        raise BrandError({"brand": "No such brand."})
    data = dict(row.data)
    entry = BrandInput(**{key: data.get(key) for key in VERSIONED_FIELDS})
    entry.copy_blocks = dict(entry.copy_blocks or {})
    entry.font_stack = entry.font_stack or "system"
    entry.is_default = bool(entry.is_default)
    entry.remove_logo = bool(entry.remove_logo)
    if row.logo:
        entry.logo = row.logo
    rollback = row.published_at is not None
    return save_brand(
        actor,
        entry,
        brand_id,
        from_version=None if rollback else row.id,
        action="brand.rollback" if rollback else "brand.publish",
        note=f"Rollback to version {number}" if rollback else row.note,
    )


def save_brand(
    actor: Actor,
    entry: BrandInput,
    brand_id: int | None = None,
    *,
    from_version: int | None = None,
    action: str | None = None,
    note: str | None = None,
) -> Brand:
    """Check `entry` and make it the brand's live settings at once (a new brand, the CLI,
    publishing a version). The version that went live is recorded: `from_version` (the id of
    the draft being published) or a new one."""
    entry = clean(entry)
    with db.transaction() as session:
        if brand_id is None:
            brand = Brand(version=1)
            session.add(brand)
        else:
            brand = session.get(Brand, brand_id, with_for_update=True)
            if brand is None:
                raise BrandError({"brand": "No such brand."})
            brand.version = (brand.version or 0) + 1
        brand.name = entry.name
        brand.colour_primary = entry.primary
        brand.colour_text = entry.text
        brand.colour_background = entry.background
        brand.colour_accent = entry.accent
        brand.font_stack = entry.font_stack
        brand.support_email = entry.support_email
        brand.terms_url = entry.terms_url
        brand.privacy_url = entry.privacy_url
        brand.copy_blocks = entry.copy_blocks
        if entry.logo:
            brand.logo, brand.logo_type = entry.logo, entry.logo_type
        elif entry.remove_logo:
            brand.logo, brand.logo_type = None, None
        has_default = session.scalar(select(Brand.id).where(Brand.is_default.is_(True)))
        if entry.is_default or has_default is None:
            session.execute(
                update(Brand).where(Brand.is_default.is_(True)).values(is_default=False)
            )
            brand.is_default = True
        session.flush()
        if from_version is not None:
            live = session.get(BrandVersion, from_version)
            live.published_at = utcnow()
        else:
            live = BrandVersion(
                brand_id=brand.id,
                version=_next_version(session, brand.id),
                data=_data_of(entry),
                logo=brand.logo,
                logo_type=brand.logo_type,
                author=actor.email,
                note=note,
                published_at=utcnow(),
            )
            session.add(live)
            session.flush()
        audit.record(
            actor,
            action or ("brand.create" if brand_id is None else "brand.update"),
            target=f"brand {brand.id}: {brand.name}",
            detail={
                "brand_id": brand.id,
                "version": brand.version,
                "default": brand.is_default,
                "brand_version": live.version,
            },
            session=session,
        )
    branding_cache.forget()
    return brand


def assign(actor: Actor, platform: str, source_key: str, brand_id: int) -> None:
    source_key = (source_key or "").strip() or "*"
    if platform not in registry.names():
        raise BrandError({"platform": "Choose a platform."})
    if not SOURCE_KEY.fullmatch(source_key):
        raise BrandError({"source_key": "Use * or an id of letters, digits and . _ : @ -"})
    try:
        with db.transaction() as session:
            if session.get(Brand, brand_id) is None:
                raise BrandError({"brand": "No such brand."})
            existing = session.scalar(
                select(BrandAssignment).where(
                    BrandAssignment.platform == platform, BrandAssignment.source_key == source_key
                )
            )
            if existing is None:
                session.add(
                    BrandAssignment(platform=platform, source_key=source_key, brand_id=brand_id)
                )
            else:
                existing.brand_id = brand_id
            audit.record(
                actor,
                "brand.assign",
                target=f"{platform}:{source_key}",
                detail={"platform": platform, "source_key": source_key, "brand_id": brand_id},
                session=session,
            )
    except IntegrityError:
        raise BrandError({"source_key": "That source was just assigned: try again."}) from None
    branding_cache.forget()


def unassign(actor: Actor, assignment_id: int) -> None:
    with db.transaction() as session:
        row = session.get(BrandAssignment, assignment_id)
        if row is None:
            return
        session.delete(row)
        audit.record(
            actor,
            "brand.unassign",
            target=f"{row.platform}:{row.source_key}",
            detail={"brand_id": row.brand_id},
            session=session,
        )
    branding_cache.forget()
