"""The portal's one URL check: every URL that comes from outside (a merchant's success and cancel
URLs, a platform's `redirect_url`, a brand's links, a webhook or alert endpoint) passes here.

Browsers and most HTTP libraries parse URLs by the WHATWG URL Standard; Python's `urlsplit` does
not (it keeps a backslash in the user name, where a browser reads it as a slash, and it keeps tabs
and newlines that a browser strips). Instead of guessing how a parser will read a tricky URL, this
module accepts only the plain shape on which every parser agrees, and refuses the rest:

- printable ASCII URL code points only: no control characters, spaces, tabs or newlines (the
  Standard silently removes those), no backslashes (the Standard reads one as `/` in http(s)
  URLs), no `"<>`{}|^`, nothing non-ASCII (percent-encode paths; write an internationalised
  host in its punycode `xn--` form);
- `http:` or `https:` (in any letter case, returned in lower case) followed by exactly `//`
  (`https:/host` and `https:host` mean `https://host` to a browser);
- no user information (`user:pass@`), no percent-escapes in the host (the Standard decodes them),
  host names made of letters, digits and hyphens, every label valid IDNA when it is punycode;
- IP addresses only in their plain form: a host that ends in a number is an IPv4 address to a
  browser (`2130706433`, `0x7f.1`, `127.1` are all 127.0.0.1), so it must be dotted-quad decimal.

Hosts are compared as the lower-case ASCII text returned here, so a look-alike host (Cyrillic
`а` for Latin `a`) is refused outright and its punycode form never equals an allow-listed name.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

MAX_URL_LENGTH = 2048
SCHEMES = ("https", "http")
LOOPBACK_NAMES = frozenset({"localhost"})
# Printable ASCII that is not a URL code point (the Standard): markup and template characters
# that a URL never needs unescaped.
NOT_URL_CODE_POINTS = frozenset('"<>`{}|^')

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
_DOTTED_QUAD = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}"
)  # noqa: E501
_PORT = re.compile(r"[0-9]{1,5}")


class UnsafeUrl(ValueError):
    """A URL the portal refuses; the message says why, in words a merchant can act on."""


@dataclass(frozen=True)
class CheckedUrl:
    url: str  # the URL as given, with the scheme and host in lower case
    scheme: str
    host: str  # lower-case ASCII; an IPv6 address without its brackets
    port: int | None

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def is_loopback(self) -> bool:
        """localhost or a loopback address literal (127.0.0.0/8, ::1)."""
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def check_url(value, *, allow_http: str = "never") -> CheckedUrl:
    """The parts of `value` if it is a plain absolute http(s) URL, else UnsafeUrl.

    `allow_http`: "never" (https only), "loopback" (plain http only to localhost or a loopback
    address, for local runs and the sandbox) or "always".
    """
    if not isinstance(value, str):
        raise UnsafeUrl("the URL must be text")
    if not value:
        raise UnsafeUrl("the URL is empty")
    if len(value) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    for char in value:
        if not "\x21" <= char <= "\x7e":
            if char.isascii():
                raise UnsafeUrl("the URL contains a space, tab, newline or control character")
            raise UnsafeUrl(
                "the URL contains non-ASCII characters: percent-encode them, and write an "
                "internationalised host name in its punycode (xn--) form"
            )
    if "\\" in value:
        raise UnsafeUrl("the URL contains a backslash")
    odd = sorted(set(value) & NOT_URL_CODE_POINTS)
    if odd:
        raise UnsafeUrl(f"the URL contains {' '.join(odd)}: percent-encode such characters")
    match = _SCHEME.match(value)
    if match is None:
        raise UnsafeUrl("the URL must be absolute and start with https://")
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise UnsafeUrl(f"the scheme {scheme!r} is not allowed: use https://")
    rest = value[match.end() :]
    if not rest.startswith("//") or rest.startswith("///"):
        raise UnsafeUrl("the scheme must be followed by exactly two slashes and a host")
    rest = rest[2:]
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        raise UnsafeUrl("the URL must not contain a user name or password (user@host)")
    host, port = _split_port(authority)
    host = _check_host(host)
    checked = CheckedUrl(
        url=f"{scheme}://{_bracketed(host)}{'' if port is None else f':{port}'}{tail}",
        scheme=scheme,
        host=host,
        port=port,
    )
    local_only = allow_http == "loopback" and not checked.is_loopback
    if scheme == "http" and (allow_http == "never" or local_only):
        raise UnsafeUrl("the URL must use https://")
    return checked


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split_port(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise UnsafeUrl("the IPv6 address in the host is not closed with ]")
        host, after = authority[: close + 1], authority[close + 1 :]
    else:
        host, colon, port_text = authority.partition(":")
        after = colon + port_text
    if not after:
        return host, None
    port_text = after[1:] if after.startswith(":") else None
    if port_text is None or not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise UnsafeUrl("the port must be a number from 1 to 65535")
    return host, int(port_text)


def _check_host(host: str) -> str:
    if not host:
        raise UnsafeUrl("the URL has no host")
    if "%" in host:
        raise UnsafeUrl("the host must not contain percent-escapes")
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise UnsafeUrl("the host is not a valid IPv6 address") from None
        return address.compressed
    host = host.lower()
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # The Standard reads such a host as an IPv4 address, in decimal, octal or hex parts.
        if not _DOTTED_QUAD.fullmatch(host):
            raise UnsafeUrl("an IP address host must be written as four decimal numbers")
        return host
    if len(host) > 253:
        raise UnsafeUrl("the host name is too long")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise UnsafeUrl(f"the host {host!r} is not a valid host name")
        if label.startswith("xn--"):
            _check_punycode(label, host)
        elif label[2:4] == "--":
            raise UnsafeUrl(f"the host {host!r} is not a valid host name")
    return host


def _check_punycode(label: str, host: str) -> None:
    """An `xn--` label must be valid IDNA 2008 (the `idna` package, which requests uses too)."""
    try:
        decoded = idna.decode(label)
    except (idna.IDNAError, UnicodeError, ValueError):
        raise UnsafeUrl(f"the host {host!r} has an invalid punycode label") from None
    if decoded.isascii():
        raise UnsafeUrl(f"the host {host!r} has an invalid punycode label")


def host_of(value) -> str | None:
    """The checked host of `value`, or None when the URL is refused."""
    try:
        return check_url(value, allow_http="always").host
    except UnsafeUrl:
        return None


# A URL's user information (`user:password@`), anywhere in a text: the password part, or the
# whole of it when there is no colon (`https://TOKEN@host` carries a token as the user name).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/\s]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][^=&#\s]*(?:pass|pwd|secret|token|key|sig|auth|credential)[^=&#\s]*=)"
    r"(?P<value>[^&#\s]*)",
    re.IGNORECASE,
)
MASK = "***"


def mask_credentials(text: str) -> str:
    """`text` with every URL password (`smtp://user:***@`, `redis://:***@`,
    `postgresql://u:***@`) and secret-looking query value (`?token=***`) masked."""

    def userinfo(match: re.Match) -> str:
        user, colon, _password = match.group("info").partition(":")
        shown = f"{user}:{MASK}" if colon else MASK
        return f"{match.group('scheme')}{shown}@"

    text = _USERINFO.sub(userinfo, text)
    return _SECRET_QUERY.sub(lambda m: m.group("name") + MASK, text)
