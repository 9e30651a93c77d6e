"""`flask --app wsgi portal ...`: init-db, worker, reconcile."""

from __future__ import annotations

import re

import click
from flask import current_app
from flask.cli import AppGroup

from portal.db import upgrade_schema

portal_cli = AppGroup("portal", help="Checkout portal operations.")


def _services():
    return current_app.extensions["portal"]


@portal_cli.command("init-db")
def init_db():
    """Create or upgrade the database schema (idempotent)."""
    settings = current_app.config["PORTAL"]
    upgrade_schema(settings["DATABASE_URL"])
    if settings["SANDBOX"]:
        from portal.sandbox.store import init_store

        init_store(settings["SANDBOX_DATABASE_URL"])
    click.echo("database is up to date")


@portal_cli.command("worker")
@click.option("--once", is_flag=True, help="Run the jobs that are due now, then exit.")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between polls when idle.")
def worker(once: bool, poll: float):
    """Run due jobs (fulfilment retries, expiries, reconciliation) until stopped."""
    from portal.jobs import Worker

    runner = Worker(_services(), poll_seconds=poll)
    runner.install_signal_handlers()
    click.echo(f"worker {runner.worker_id} started" + (" (once)" if once else ""))
    counts = runner.run(once=once)
    click.echo("worker stopped: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _hours(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([hd]?)", value.strip())
    if not match:
        raise click.BadParameter("use hours like 48h, or days like 2d")
    number = float(match.group(1))
    return number * 24 if match.group(2) == "d" else number


@portal_cli.command("reconcile")
@click.option("--since", default="48h", show_default=True, help="Window, e.g. 48h or 7d.")
def reconcile_command(since: str):
    """Compare Stripe's Checkout Sessions with orders and repair what drifted."""
    from portal.fulfilment import reconcile
    from portal.http import UpstreamError

    try:
        report = reconcile(_services(), _hours(since))
    except UpstreamError as exc:
        raise click.ClickException(f"Stripe could not be reached: {exc}") from exc
    width = max(len(name) for name, _ in report.rows())
    for name, value in report.rows():
        click.echo(f"{name.ljust(width)}  {value}")
    for line in report.repaired:
        click.echo(f"repaired  {line}")


def init_app(app) -> None:
    app.cli.add_command(portal_cli)
