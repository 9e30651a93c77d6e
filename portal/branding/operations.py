"""Brand writes: create and edit brands, choose the default, assign brands to platform sources.
Each checks its input (portal.branding.brands.clean), bumps the brand's version (its stylesheet
and logo URLs change with it) and writes an audit entry in the same transaction."""

from __future__ import annotations

import re

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from portal.admin import audit
from portal.admin.audit import Actor
from portal.branding import cache as branding_cache
from portal.branding.brands import BrandError, BrandInput, clean
from portal.db import db
from portal.models import Brand, BrandAssignment

PLATFORMS = ("skilljar", "openlearning", "cleeng", "merchant")
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


def save_brand(actor: Actor, entry: BrandInput, brand_id: int | None = None) -> Brand:
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
        audit.record(
            actor,
            "brand.create" if brand_id is None else "brand.update",
            target=f"brand {brand.id}: {brand.name}",
            detail={"brand_id": brand.id, "version": brand.version, "default": brand.is_default},
            session=session,
        )
    branding_cache.forget()
    return brand


def assign(actor: Actor, platform: str, source_key: str, brand_id: int) -> None:
    source_key = (source_key or "").strip() or "*"
    if platform not in PLATFORMS:
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
