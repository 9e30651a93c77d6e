"""The sandbox (`PORTAL_SANDBOX=1`): stand-ins for Stripe and the platforms, served by the portal
itself under `/sandbox/`, so `make demo` shows a whole purchase on one machine. The portal talks to
them over real HTTP through the same clients it uses for the real services. Never in production:
the settings refuse live Stripe keys when the sandbox is on."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template, request

from portal.sandbox.store import Store

bp = Blueprint("sandbox", __name__, url_prefix="/sandbox")


@bp.get("/")
def index():
    store = current_app.extensions["sandbox_store"]
    sessions = store.list("checkout.session")[:20]
    calls = store.calls("skilljar")[-20:]
    from portal.admin.cli import DEMO_USERS

    return render_template(
        "sandbox/index.html",
        sessions=sessions,
        calls=list(reversed(calls)),
        demo_users=DEMO_USERS,
    )


@bp.post("/control")
def control():
    """Tests and benchmarks tune the stand-ins: fault rate, timeout rate (the answer comes after
    the portal's read timeout), latency, webhook delay."""
    store = current_app.extensions["sandbox_store"]
    data = request.get_json(silent=True) or {}
    allowed = {
        "skilljar_fault_rate",
        "skilljar_latency_ms",
        "openlearning_fault_rate",
        "openlearning_latency_ms",
        "cleeng_fault_rate",
        "cleeng_latency_ms",
        "webhook_delay_seconds",
        "stripe_latency_ms",
        "skilljar_timeout_rate",
        "openlearning_timeout_rate",
    }
    unknown = set(data) - allowed
    if unknown:
        return jsonify(error={"message": f"unknown controls: {sorted(unknown)}"}), 400
    for name, value in data.items():
        store.set_control(name, float(value))
    return jsonify({name: store.control(name, 0.0) for name in allowed})


def init_app(app) -> None:
    from importlib import import_module

    from portal import csrf
    from portal.platforms import registry
    from portal.sandbox import stripe_api

    app.extensions["sandbox_store"] = Store(app.config["PORTAL"].sandbox_database_url)
    # Each platform's stand-in, as its spec names it (`PlatformSpec.sandbox_stand_in`).
    stand_ins = [
        import_module(spec.sandbox_stand_in).bp
        for spec in registry.installed()
        if spec.sandbox_stand_in
    ]
    for blueprint in (bp, stripe_api.bp, *stand_ins):
        app.register_blueprint(blueprint)
        csrf.exempt(blueprint)
