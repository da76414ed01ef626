"""Webhook URL checks: http(s) only, and no private targets unless allowed (SSRF).

Two stages, because a host name can point anywhere:

* :func:`check_webhook_url` is pure (no I/O): scheme, host, and, when the host is an IP
  literal (including the legacy IPv4 forms a resolver accepts, such as ``127.1`` or
  ``0x7f000001``) or a ``localhost`` name, whether it is a forbidden target. The API uses
  it to answer 422 to a bad ``webhook_url``.
* :func:`check_resolved` runs at delivery time on the addresses a name resolved to; the
  HTTP transport (``app.webhooks.transport``) then connects to one of exactly those
  addresses, so a second lookup cannot swap in another (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})
# Long enough for any real endpoint, short enough to keep rows and logs sane.
MAX_URL_LENGTH = 2048
# RFC 6761 §6.3: "localhost" and names under it are loopback by definition.
_LOCALHOST = re.compile(r"^(?:.+\.)?localhost\.?$", re.IGNORECASE)
# inet_aton accepts 1 to 4 dot-separated parts in decimal, octal or hex: "127.1", "0x7f.1".
_LEGACY_IPV4 = re.compile(r"^(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}$", re.I)
# RFC 6052 §2.1: the well-known NAT64 prefix embeds an IPv4 address in the last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class InvalidWebhookUrlError(ValueError):
    """The URL cannot be used as a webhook target; ``str()`` says why (fit for a 422)."""


class ForbiddenAddressError(InvalidWebhookUrlError):
    """The target is (or resolves to) an address that is not allowed."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is a translation form."""
    if address.ipv4_mapped is not None:  # RFC 4291 §2.5.5.2 ::ffff:a.b.c.d
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:  # RFC 3056 2002:aabb:ccdd::/48
        return address.sixtofour
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not receive webhooks without ``allow_private``; None if it may.

    Refused: loopback, private (RFC 1918, unique local), link-local (cloud metadata
    services live there), multicast, unspecified, reserved and every other range that is
    not globally reachable (shared address space, documentation, benchmarking...).
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = forbidden_reason(embedded)
            return None if inner is None else f"{inner} (embedded in {address})"
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "not globally reachable"),
    )
    for refused, what in checks:
        if refused:
            return f"{address} is a {what} address"
    return None


def parse_host_literal(host: str) -> IPAddress | None:
    """The IP address a URL host denotes by itself, or None when it is a name.

    Accepts what resolvers accept without DNS: dotted quads, IPv6 (with or without
    brackets, zone id dropped), and the legacy IPv4 forms of inet_aton.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    bare = bare.split("%", 1)[0]  # RFC 6874 zone identifier
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def _split(url: str) -> SplitResult:
    if not isinstance(url, str) or not url:
        raise InvalidWebhookUrlError("the webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrlError(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise InvalidWebhookUrlError("the webhook URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidWebhookUrlError(f"the webhook URL is malformed: {exc}") from None
    return parts


def webhook_host(url: str) -> str:
    """The host part of a URL (lower-case, no brackets), or '' when it has none."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """Check a webhook URL without any I/O; return it unchanged or raise.

    Raises :class:`InvalidWebhookUrlError` for anything but an absolute http(s) URL with
    a host, and :class:`ForbiddenAddressError` when ``allow_private`` is False and the
    host is a forbidden IP literal or a ``localhost`` name.
    """
    parts = _split(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise InvalidWebhookUrlError("the webhook URL must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise InvalidWebhookUrlError("the webhook URL has no host")
    if allow_private:
        return url
    if _LOCALHOST.match(host):
        raise ForbiddenAddressError(f"{host} is a loopback name")
    address = parse_host_literal(host)
    if address is not None:
        reason = forbidden_reason(address)
        if reason is not None:
            raise ForbiddenAddressError(reason)
    return url


def check_resolved(host: str, addresses: Iterable[IPAddress]) -> list[IPAddress]:
    """All addresses ``host`` resolved to, if every one is allowed; else raise.

    Every address must pass, not just one: the connection may go to any of them.
    """
    checked: list[IPAddress] = []
    for address in addresses:
        reason = forbidden_reason(address)
        if reason is not None:
            raise ForbiddenAddressError(f"{host} resolves to {reason}")
        if address not in checked:
            checked.append(address)
    if not checked:
        raise ForbiddenAddressError(f"{host} resolves to no address")
    return checked
