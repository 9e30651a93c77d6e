"""The services the core works with, built once per app: settings, Stripe, the platforms, the
job kinds the worker runs.

The checkout core, the jobs and the webhook handler take a `Services` argument instead of reaching
into Flask, so they run the same from a request, the worker, the CLI or a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from portal.config import Settings
from portal.job_kinds import all_kinds
from portal.jobs import Kind
from portal.orders.timeline import record_call
from portal.platforms import Platform, build_platforms
from portal.stripe_gateway import StripeGateway
from portal.urls import UnsafeUrl, check_url


@dataclass
class Services:
    settings: Settings
    stripe: StripeGateway
    platforms: dict[str, Platform]
    redirect_hosts: frozenset[str] = field(default_factory=frozenset)
    # More hosts a redirect may go to, decided at the time (a merchant API key's allowed hosts).
    redirect_checks: list = field(default_factory=list)
    # Every kind of job, by name (portal.job_kinds): what the queue runs.
    job_kinds: dict[str, Kind] = field(default_factory=dict)

    @property
    def public_url(self) -> str:
        return self.settings.public_url

    def url(self, path: str) -> str:
        return self.public_url + path

    def platform(self, name: str) -> Platform:
        return self.platforms[name]

    def allowed_redirect(self, url: str | None) -> str | None:
        """The URL if it passes the portal's URL check (portal.urls: https, or http to this
        machine) and its host is allow-listed, else None."""
        if not url:
            return None
        try:
            checked = check_url(url, allow_http="loopback")
        except UnsafeUrl:
            return None
        host = checked.host
        if host in self.redirect_hosts or any(check(host) for check in self.redirect_checks):
            return checked.url
        return None


def build_services(settings: Settings) -> Services:
    gateway = StripeGateway(
        settings.stripe_secret_key,
        settings.stripe_api_base,
        connect_timeout=settings.http_connect_timeout,
        read_timeout=max(settings.http_read_timeout, 30.0),
        recorder=record_call,
    )
    hosts = set(settings.redirect_hosts)
    if settings.sandbox:
        hosts.add(urlsplit(settings.public_url).hostname or "")
    return Services(
        settings=settings,
        stripe=gateway,
        platforms=build_platforms(settings, record_call),
        redirect_hosts=frozenset(h for h in hosts if h),
        job_kinds=all_kinds(),
    )
