"""Where a request the TU sends goes, and over which transport (RFC 3261 §8.1.2, §18.1.1).

A reduced RFC 3263: the next hop is the first Route URI, else the Request-URI; its
`transport` parameter (compared case-insensitively, §19.1.4) picks the transport, else UDP,
or TCP for a request larger than 1300 bytes (§18.1.1); its `maddr`, else its host, and its
port (5060 by default) give the address. No NAPTR/SRV lookups; names resolve to A/AAAA in
`SipServer.resolve`.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from app.sip.headers import parse_name_addr
from app.sip.message import Request
from app.sip.uri import SipUri

__all__ = [
    "DEFAULT_SIP_PORT",
    "UDP_SIZE_LIMIT",
    "Target",
    "is_ip_literal",
    "next_hop_uri",
    "select_target",
]

#: RFC 3261 §19.1.2: default port of sip: URIs (5061 for sips:, unsupported here).
DEFAULT_SIP_PORT = 5060

#: RFC 3261 §18.1.1: with the path MTU unknown, a request larger than 1300 bytes must go
#: over a congestion-controlled transport.
UDP_SIZE_LIMIT = 1300

# Bytes the endpoint adds before sending (top Via with a fresh branch and rport).
_VIA_ALLOWANCE = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A resolved next hop: (host, port) and the transport, lower case."""

    addr: tuple[str, int]
    transport: str


# Cached: every UDP send asks about the same few peers (ip_address() is ~2 us).
@functools.lru_cache(maxsize=1024)
def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def next_hop_uri(request: Request) -> SipUri:
    """First Route URI, else the Request-URI (RFC 3261 §8.1.2); must be sip:."""
    routes = request.headers.get_list("Route")
    uri = parse_name_addr(routes[0]).uri if routes else request.parsed_uri()
    if not isinstance(uri, SipUri):
        raise ValueError(f"cannot send to a non-SIP URI: {uri}")
    if uri.secure:
        raise ValueError("sips: needs TLS, which callctl does not offer")
    return uri


def select_target(request: Request, *, tcp_enabled: bool = True) -> Target:
    """Next hop and transport for `request` (host may still be a name)."""
    uri = next_hop_uri(request)
    transport = uri.transport  # lower-cased by SipUri
    if transport is None:
        transport = "udp"
        size = len(request.to_bytes()) + _VIA_ALLOWANCE
        if tcp_enabled and size > UDP_SIZE_LIMIT:
            transport = "tcp"  # RFC 3261 §18.1.1
    elif transport not in ("udp", "tcp"):
        raise ValueError(f"unsupported transport parameter {transport!r}")
    host = uri.maddr or uri.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Target(addr=(host, uri.port or DEFAULT_SIP_PORT), transport=transport)
