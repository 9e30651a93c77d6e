"""`flask --app wsgi portal create-user EMAIL --role admin|operator|marketer`: a local console
account. The password is prompted for (twice, hidden), or read from standard input with
`--password-stdin` for scripts."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from portal.admin import operations
from portal.admin.audit import Actor
from portal.admin.auth import normalise_email, verify_password
from portal.cli import SettingError
from portal.db import db
from portal.models import Role, User


@click.command("create-user")
@click.argument("email")
@click.option(
    "--role",
    required=True,
    type=click.Choice([str(role) for role in Role]),
    help="admin: everything; operator: orders and their actions; marketer: branding only.",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
@click.option(
    "--update",
    is_flag=True,
    help="The user exists: set this role and password (and reactivate the account).",
)
def create_user(email: str, role: str, password_stdin: bool, update: bool):
    """Create a console user with a local password (at least 12 characters)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("A password is required.")
    actor = Actor.command_line()
    try:
        if update:
            with db.reader() as session:
                user = session.scalar(select(User).where(User.email == normalise_email(email)))
            if user is None:
                raise operations.UserError(f"There is no user {normalise_email(email)}.")
            operations.update_user(actor, user.id, role=role, active=True, password=password)
            click.echo(f"updated {user.email} ({role})")
            return
        user = operations.create_user(actor, email, role, password)
    except operations.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created {user.email} ({role})")


# The sandbox's console accounts, one per role. Their passwords are printed on every `make demo`:
# they guard nothing but a sandbox on the local machine, and create-demo-users refuses to run
# anywhere else.
DEMO_USERS = tuple((f"{role}@demo.example", str(role), f"demo-{role}-password") for role in Role)


@click.command("create-demo-users")
@with_appcontext
def create_demo_users():
    """Sandbox only: create (or reset) a console account for each role, printed with its
    password. Run again, it leaves the same accounts with the same passwords."""
    if not current_app.config["PORTAL"].sandbox:
        raise SettingError(
            "create-demo-users needs PORTAL_SANDBOX=1 (demo accounts are sandbox only)"
        )
    actor = Actor.command_line()
    for email, role, password in DEMO_USERS:
        with db.reader() as session:
            user = session.scalar(select(User).where(User.email == email))
        if user is None:
            operations.create_user(actor, email, role, password)
        elif not (
            user.role == role and user.active and verify_password(user.password_hash, password)
        ):
            operations.update_user(actor, user.id, role=role, active=True, password=password)
        click.echo(f"{role:<9} {email:<23} {password}")


def init_app(app) -> None:
    from portal.cli import portal_cli

    portal_cli.add_command(create_user)
    portal_cli.add_command(create_demo_users)
