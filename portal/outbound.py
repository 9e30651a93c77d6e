"""Requests to addresses a merchant or an operator chose (merchant webhooks, the alert webhook):
never to the portal's own network.

A URL is checked by `portal.urls` first; then its host is resolved, EVERY address it resolves to
must be public (not loopback, private, link-local, cloud metadata, unspecified, multicast, shared
or reserved; IPv4 hidden in IPv6 is unwrapped first), and the connection goes to the address that
was checked, so a DNS answer that changes between the check and the connect (DNS rebinding) gains
nothing. TLS still checks the certificate against the host name (SNI and `Host` are the name).

`PORTAL_OUTBOUND_ALLOW_LOOPBACK=1` allows loopback addresses (127.0.0.0/8, ::1, localhost) and
nothing else, for the sandbox and tests, whose receivers run on this machine; it defaults to on
with `PORTAL_SANDBOX=1` and off otherwise.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from socket import AF_UNSPEC, IPPROTO_TCP, SOCK_STREAM, gaierror, getaddrinfo

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import parse_url

from portal.urls import UnsafeUrl, check_url

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance metadata services (AWS, GCP, Azure, Oracle: 169.254.169.254; AWS over IPv6;
# Alibaba): named so the refusal says what it is; the ranges below refuse them anyway.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedDestination(requests.ConnectionError):
    """An outbound request the portal refuses to make; the message says why."""


def allow_loopback(settings) -> bool:
    """`settings`: the app's `portal.config.Settings` (not imported here: config imports this
    module)."""
    value = settings.outbound_allow_loopback
    return bool(settings.sandbox) if value is None else bool(value)


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: Address, *, loopback_ok: bool) -> str | None:
    """Why a connection to `address` is refused, or None when it is a public address."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return refusal(embedded, loopback_ok=loopback_ok)
    if address.is_loopback:
        return None if loopback_ok else "a loopback address"
    if address in METADATA:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved or non-public address"
    return None


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (an address literal is itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        answers = getaddrinfo(host, port, AF_UNSPEC, SOCK_STREAM, IPPROTO_TCP)
    except (gaierror, UnicodeError, OSError) as exc:
        raise BlockedDestination(f"the host {host!r} does not resolve ({exc})") from None
    addresses = []
    for _family, _type, _proto, _name, sockaddr in answers:
        text = str(sockaddr[0]).partition("%")[0]  # an IPv6 zone (fe80::1%eth0) is link-local
        address = ipaddress.ip_address(text)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise BlockedDestination(f"the host {host!r} does not resolve")
    return addresses


def checked_addresses(host: str, port: int, *, loopback_ok: bool) -> list[Address]:
    """The addresses of `host` when every one of them may be called, else BlockedDestination."""
    if host.rstrip(".").lower() == "localhost" and not loopback_ok:
        raise BlockedDestination("the host 'localhost' is a loopback address")
    return _check_all(host, resolve(host, port), loopback_ok=loopback_ok)


def _check_all(host: str, addresses: list[Address], *, loopback_ok: bool) -> list[Address]:
    if host.rstrip(".").lower() == "localhost" and not loopback_ok:
        raise BlockedDestination("the host 'localhost' is a loopback address")
    for address in addresses:
        reason = refusal(address, loopback_ok=loopback_ok)
        if reason is not None:
            raise BlockedDestination(f"the host {host!r} is {reason} ({address})")
    return addresses


def check_destination(
    url: str, *, loopback_ok: bool, resolve_host: bool = True, unresolvable_ok: bool = False
) -> str:
    """The URL, normalised, if it may receive the portal's requests; UnsafeUrl otherwise.

    Used when a destination is registered. `resolve_host=False` checks the URL and an address
    literal only (start-up settings, which must not depend on DNS answering); the send-time check
    always resolves. `unresolvable_ok`: a name that does not resolve (yet) passes, one that
    resolves to an internal address does not (links a browser follows: a DNS hiccup must not
    stop a marketer saving a brand)."""
    checked = check_url(url, allow_http="loopback" if loopback_ok else "never")
    if checked.is_ip or checked.host == "localhost" or resolve_host:
        port = checked.port or (443 if checked.scheme == "https" else 80)
        try:
            addresses = resolve(checked.host, port)
        except BlockedDestination as exc:
            if unresolvable_ok:
                return checked.url
            raise UnsafeUrl(str(exc)) from None
        try:
            _check_all(checked.host, addresses, loopback_ok=loopback_ok)
        except BlockedDestination as exc:
            raise UnsafeUrl(str(exc)) from None
    return checked.url


class PinnedAdapter(HTTPAdapter):
    """Resolves and checks the host of each request, then connects to the checked address.

    The URL, the `Host` header and TLS (SNI and the certificate's name) keep the host name; only
    the TCP connection is made to the address that passed the check."""

    def __init__(self, *, loopback_ok: bool, **kwargs):
        self.loopback_ok = loopback_ok
        super().__init__(**kwargs)

    def send(self, request, *args, **kwargs):
        url = parse_url(request.url)
        if url.scheme not in {"http", "https"} or not url.host:
            raise BlockedDestination(f"{url.scheme!r} URLs are not called")
        if "Host" not in request.headers:
            default = 443 if url.scheme == "https" else 80
            port = "" if url.port in (None, default) else f":{url.port}"
            request.headers["Host"] = f"{url.host}{port}"
        return super().send(request, *args, **kwargs)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        name = host_params["host"]
        port = host_params["port"] or (443 if host_params["scheme"] == "https" else 80)
        address = checked_addresses(name.strip("[]"), port, loopback_ok=self.loopback_ok)[0]
        host_params["host"] = str(address)
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = name.strip("[]")
            pool_kwargs["assert_hostname"] = name.strip("[]")
        return host_params, pool_kwargs


@functools.cache
def guarded_session(loopback_ok: bool, pool_size: int = 8) -> requests.Session:
    """A session whose every request goes through `PinnedAdapter` (no proxies, no .netrc). The
    callers do not follow redirects; were one followed, its hop would pass the same check."""
    session = requests.Session()
    session.trust_env = False
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    adapter = PinnedAdapter(
        loopback_ok=loopback_ok, pool_connections=4, pool_maxsize=pool_size, max_retries=0
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def post(settings, url: str, **kwargs) -> requests.Response:
    """POST to a destination an operator or merchant chose, checked again now."""
    try:
        check_url(url, allow_http="loopback" if allow_loopback(settings) else "never")
    except UnsafeUrl as exc:
        raise BlockedDestination(str(exc)) from None
    kwargs.setdefault("allow_redirects", False)
    return guarded_session(allow_loopback(settings)).post(url, **kwargs)
