"""`flask --app wsgi portal create-user EMAIL --role admin|operator|marketer`: a local console
account. The password is prompted for (twice, hidden), or read from standard input with
`--password-stdin` for scripts."""

from __future__ import annotations

import sys

import click
from sqlalchemy import select

from portal.admin import operations
from portal.admin.audit import Actor
from portal.admin.auth import normalise_email
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


def init_app(app) -> None:
    from portal.cli import portal_cli

    portal_cli.add_command(create_user)
