"""The merchant API, `/api/v1`: checkout sessions (redirect or pay-by-link), orders, capture,
cancel, item changes and refunds for merchant systems, authenticated with secret API keys.

`openapi.json` beside this file describes it (served at `/api/v1/openapi.json`); requests are
validated against that document. Outbound webhooks live in `webhooks_out`, keys in `keys`.
"""

from __future__ import annotations

from portal.api.routes import bp


def init_app(app) -> None:
    from portal import csrf
    from portal.api import cli, keys

    app.register_blueprint(bp)
    csrf.exempt(bp)  # server-to-server JSON with a bearer key: no cookies, no CSRF
    cli.init_app(app)
    services = app.extensions["portal"]
    services.redirect_checks.append(keys.host_allowed)
    services.platform("merchant").services = services


__all__ = ["bp", "init_app"]
