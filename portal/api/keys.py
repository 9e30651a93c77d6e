"""Merchant API keys: made once (the secret is shown then and never again), stored as a SHA-256,
revocable, and each tied to a brand, its allowed redirect hosts and its webhook endpoints.

A key is `sk_test_` or `sk_live_` followed by 32 random bytes. A test key works only while the
portal's Stripe key is a test key, a live key only with a live Stripe key, so a test integration
can never take real money (and a live one never lands in a sandbox)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update

from portal.api.errors import ApiError
from portal.config import Settings
from portal.db import db
from portal.models import ApiKey, WebhookEndpoint, utcnow
from portal.outbound import check_destination
from portal.urls import UnsafeUrl

PREFIX_LENGTH = 14  # "sk_test_" + 6 characters: enough to tell keys apart in lists and logs


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def stripe_is_live(settings: Settings) -> bool:
    key = settings.stripe_secret_key or ""
    return key.startswith(("sk_live_", "rk_live_"))


@dataclass
class NewKey:
    key: ApiKey
    secret: str  # shown once
    endpoint: WebhookEndpoint | None = None  # its signing secret is shown once too


def normalise_host(host: str) -> str:
    host = host.strip().lower()
    if not host or "/" in host or " " in host or ":" in host:
        raise ValueError(f"{host!r} is not a host name (no scheme, port or path)")
    return host


def create_key(
    name: str,
    *,
    live: bool = False,
    allowed_hosts: list[str] | tuple[str, ...] = (),
    brand_name: str | None = None,
    webhook_url: str | None = None,
    loopback_ok: bool = False,
    checkout_options: dict | None = None,
) -> NewKey:
    """`loopback_ok`: the webhook may be on this machine (portal.outbound.allow_loopback)."""
    if webhook_url:
        webhook_url = checked_webhook_url(webhook_url, loopback_ok=loopback_ok)
    secret = ("sk_live_" if live else "sk_test_") + secrets.token_urlsafe(32)
    hosts = sorted({normalise_host(h) for h in allowed_hosts})
    with db.transaction() as session:
        key = ApiKey(
            name=name[:120],
            prefix=secret[:PREFIX_LENGTH],
            secret_hash=hash_secret(secret),
            live=live,
            brand_name=brand_name,
            allowed_hosts=hosts,
            checkout_options=checkout_options or None,
        )
        session.add(key)
        session.flush()
        endpoint = None
        if webhook_url:
            endpoint = add_endpoint(session, key.id, webhook_url, loopback_ok=loopback_ok)
    return NewKey(key=key, secret=secret, endpoint=endpoint)


def checked_webhook_url(url: str, *, loopback_ok: bool) -> str:
    """The URL if the portal may send webhooks there (portal.outbound), else ValueError."""
    try:
        return check_destination(url, loopback_ok=loopback_ok)
    except UnsafeUrl as exc:
        raise ValueError(f"webhook URL refused: {exc}") from None


def add_endpoint(session, api_key_id: int, url: str, *, loopback_ok: bool = False):
    url = checked_webhook_url(url, loopback_ok=loopback_ok)
    endpoint = WebhookEndpoint(
        api_key_id=api_key_id, url=url, secret="whsec_" + secrets.token_urlsafe(32)
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def revoke_key(prefix: str) -> ApiKey | None:
    """Revoke the key whose prefix is given; None if no live (unrevoked) key has it."""
    with db.transaction() as session:
        key = session.scalar(
            select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        )
        if key is None:
            return None
        key.revoked_at = utcnow()
        session.execute(
            update(WebhookEndpoint).where(WebhookEndpoint.api_key_id == key.id).values(active=False)
        )
    return key


def authenticate(header: str | None, settings: Settings) -> ApiKey:
    """The key an `Authorization: Bearer sk_...` header names, or an ApiError (401/403)."""
    if not header:
        raise ApiError(
            401,
            "api_key_missing",
            "No API key provided. Send it as `Authorization: Bearer sk_...`.",
        )
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret.startswith(("sk_test_", "sk_live_")):
        raise ApiError(401, "api_key_invalid", "The Authorization header must be `Bearer sk_...`.")
    digest = hash_secret(secret)
    with db.reader() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.secret_hash == digest))
    # The lookup is by hash; comparing the hashes again in constant time costs nothing.
    if key is None or not hmac.compare_digest(key.secret_hash, digest):
        raise ApiError(401, "api_key_invalid", "Invalid API key provided.")
    if key.revoked_at is not None:
        raise ApiError(401, "api_key_revoked", "This API key has been revoked.")
    if key.live != stripe_is_live(settings):
        mode = "live" if key.live else "test"
        other = "test" if key.live else "live"
        raise ApiError(
            403,
            "api_key_mode_mismatch",
            f"This is a {mode} key and this portal takes {other} payments; use a {other} key.",
        )
    return key


def host_allowed(host: str) -> bool:
    """Whether any unrevoked key allows redirects to `host` (the portal's redirect check)."""
    with db.reader() as session:
        keys = session.scalars(select(ApiKey.allowed_hosts).where(ApiKey.revoked_at.is_(None)))
        return any(host in (hosts or []) for hosts in keys)


def touch(key: ApiKey) -> None:
    with db.transaction() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=utcnow()))
