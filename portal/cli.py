"""`flask --app wsgi portal ...`: init-db, worker, reconcile."""

from __future__ import annotations

import re

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import OperationalError

from portal.config import ConfigError
from portal.db import upgrade_schema


class SettingError(click.ClickException):
    """A configuration error, told as one line naming the setting: exit status 2, no traceback
    (the status click gives a usage error: the command was fine, what it runs with was not)."""

    exit_code = 2


def app_or_exit(factory):
    """`factory()`, except that under a command line (`flask --app wsgi ...`) a ConfigError
    becomes one line naming the setting and exit status 2. gunicorn and tests see the error as
    it is: they have no click context."""
    try:
        return factory()
    except ConfigError as exc:
        if click.get_current_context(silent=True) is None:
            raise
        raise SettingError(str(exc)) from None


class PortalGroup(AppGroup):
    """The `portal` commands: a ConfigError raised while a command runs (a setting read only
    there) ends the same way as one raised at start-up."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise SettingError(str(exc)) from None
        except OperationalError as exc:  # the database named by the setting cannot be used
            reason = str(exc.orig or exc).strip().splitlines()[0]
            if "no such table" in reason:
                reason += " (run `flask --app wsgi portal init-db` first)"
            raise SettingError(
                f"PORTAL_DATABASE_URL: the database cannot be used: {reason}"
            ) from None


portal_cli = PortalGroup("portal", help="Checkout portal operations.")


def _services():
    return current_app.extensions["portal"]


@portal_cli.command("init-db")
def init_db():
    """Create or upgrade the database schema (idempotent)."""
    settings = current_app.config["PORTAL"]
    upgrade_schema(settings.database_url)
    if settings.sandbox:
        from portal.sandbox.store import init_store

        init_store(settings.sandbox_database_url)
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
