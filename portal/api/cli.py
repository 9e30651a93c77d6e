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
@click.option(
    "--billing-address",
    type=click.Choice(["auto", "required"]),
    help="Checkout asks for the billing address (required) or only when needed (auto).",
)
@click.option(
    "--shipping-country",
    "shipping_countries",
    multiple=True,
    help="Collect a shipping address in this country (ISO code; repeat for more).",
)
@click.option("--tax-id", is_flag=True, help="Let buyers enter a VAT or other tax id.")
@click.option("--invoice", is_flag=True, help="Stripe makes an invoice (PDF) for each payment.")
@click.option("--promotion-codes", is_flag=True, help="Let buyers enter a promotion code.")
@click.option("--phone", is_flag=True, help="Ask buyers for a phone number.")
def create_api_key(
    name,
    live,
    allowed_hosts,
    brand_name,
    webhook_url,
    billing_address,
    shipping_countries,
    tax_id,
    invoice,
    promotion_codes,
    phone,
):
    """Create a merchant API key; the key (and webhook secret) is printed once. The Checkout
    options are the defaults of its sessions (a session's own checkout_options replace them)."""
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
    countries = sorted({c.strip().upper() for c in shipping_countries})
    for country in countries:
        if len(country) != 2 or not country.isalpha():
            raise click.BadParameter(
                f"{country!r} is not a country code", param_hint="--shipping-country"
            )
    options = {
        "billing_address_collection": billing_address,
        "shipping_address_countries": countries,
        "tax_id_collection": tax_id,
        "invoice_creation": invoice,
        "allow_promotion_codes": promotion_codes,
        "phone_number_collection": phone,
    }
    try:
        made = keys.create_key(
            name,
            live=live,
            allowed_hosts=allowed_hosts,
            brand_name=brand_name,
            webhook_url=webhook_url,
            loopback_ok=loopback_ok,
            checkout_options={k: v for k, v in options.items() if v},
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
    if made.key.checkout_options:
        chosen = ", ".join(sorted(made.key.checkout_options))
        click.echo(f"Checkout collects by default: {chosen}")


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
