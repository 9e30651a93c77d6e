"""Brands and marketer templates: brand settings per platform source (`brands`, `operations`),
the sandboxed learner template environment with its override -> default loader chain
(`environment`), the one rendering function of learner pages (`render.render_learner`), sample
pages and the override workflow (`samples`, `overrides`). The console pages that edit them are
in portal/admin/branding.py.

Public routes here: `/brand/<id>/theme.css` (the brand's colours and font stack as CSS custom
properties) and `/brand/<id>/logo` (the uploaded logo, with a strict content type).
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, request

from portal.db import db
from portal.models import Brand

bp = Blueprint("branding", __name__)

ONE_YEAR = 365 * 24 * 3600


def _cached(response: Response, brand: Brand) -> Response:
    from portal.branding.brands import etag

    response.set_etag(etag(brand))
    # The URL carries the version (?v=): a matching one may be kept for good.
    if request.args.get("v") == str(brand.version):
        response.headers["Cache-Control"] = f"public, max-age={ONE_YEAR}, immutable"
    else:
        response.headers["Cache-Control"] = "public, max-age=300"
    return response.make_conditional(request)


def _brand(brand_id: int) -> Brand:
    with db.reader() as session:
        brand = session.get(Brand, brand_id)
    if brand is None:
        abort(404)
    return brand


@bp.get("/brand/<int:brand_id>/theme.css")
def theme(brand_id):
    from portal.branding.brands import theme_css

    brand = _brand(brand_id)
    return _cached(Response(theme_css(brand), mimetype="text/css"), brand)


@bp.get("/brand/<int:brand_id>/logo")
def logo(brand_id):
    brand = _brand(brand_id)
    if not brand.logo or brand.logo_type not in {"image/png", "image/svg+xml"}:
        abort(404)
    response = Response(brand.logo)
    response.headers["Content-Type"] = brand.logo_type  # exactly: no charset, no sniffing
    # Opened directly, an SVG is a document: nothing in it may run or load.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    )
    response.headers["Content-Disposition"] = "inline; filename=logo"
    return _cached(response, brand)


def init_app(app) -> None:
    from portal.branding import brands, cache

    app.register_blueprint(bp)
    cache.init_app(app)
    settings = app.config["PORTAL"]
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_null_translations(newstyle=True)

    @app.context_processor
    def learner_frame():
        """For the few pages still rendered with Flask's own environment (the console, the
        sandbox, the Cleeng review page): the default brand and English, so base.html reads the
        same names everywhere."""
        from flask import url_for

        return {
            "brand": brands.brand_for(None, settings, url_for),
            "lang": "en",
            "locale": settings.default_locale,
            "preview": False,
        }
