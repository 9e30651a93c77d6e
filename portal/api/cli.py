"""`flask --app wsgi portal create-api-key NAME` and `revoke-api-key PREFIX`, added to the
existing `portal` command group."""

from __future__ import annotations

import click
from flask import current_app

from portal.api import keys
from portal.branding.brands import header_safe
from portal.cli import portal_cli
from portal.outbound import allow_loopback


@portal_cli.command("create-api-key")
@click.argument("name")
@click.option("--live", is_flag=True, help="A live key (sk_live_); default is a test key.")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="A host success and cancel URLs may point to (repeat for more).",
)
@click.option("--brand", "brand_name", help="The brand shown in pay-link emails.")
@click.option("--webhook-url", help="An endpoint that receives this key's order events.")
def create_api_key(name, live, allowed_hosts, brand_name, webhook_url):
    """Create a merchant API key; the key (and webhook secret) is printed once."""
    if brand_name is not None and (not header_safe(brand_name) or not brand_name.strip()):
        raise click.BadParameter(
            "a brand name of text without line breaks or control characters (it is the "
            "sender's name in emails)",
            param_hint="--brand",
        )
    loopback_ok = allow_loopback(current_app.extensions["portal"].settings)
    if webhook_url:
        try:
            webhook_url = keys.checked_webhook_url(webhook_url, loopback_ok=loopback_ok)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--webhook-url") from exc
    try:
        made = keys.create_key(
            name,
            live=live,
            allowed_hosts=allowed_hosts,
            brand_name=brand_name,
            webhook_url=webhook_url,
            loopback_ok=loopback_ok,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allowed-host") from exc
    click.echo(f"API key {made.key.prefix}… for {name!r} created. It is shown once; keep it safe:")
    click.echo(f"  {made.secret}")
    if made.endpoint is not None:
        click.echo(f"Webhook endpoint {made.endpoint.url}, signing secret (shown once):")
        click.echo(f"  {made.endpoint.secret}")
    hosts = ", ".join(made.key.allowed_hosts) or "none (add with --allowed-host)"
    click.echo(f"Allowed redirect hosts: {hosts}")


@portal_cli.command("revoke-api-key")
@click.argument("prefix")
def revoke_api_key(prefix):
    """Revoke the API key that starts with PREFIX (as printed at creation)."""
    key = keys.revoke_key(prefix.rstrip("…"))
    if key is None:
        raise click.ClickException(f"no active API key with prefix {prefix!r}")
    click.echo(f"API key {key.prefix}… ({key.name}) revoked; its webhooks are switched off.")


def init_app(app) -> None:
    """The commands are on `portal_cli` as soon as this module is imported."""
