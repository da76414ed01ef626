"""The pooled HTTP client of the webhook dispatcher, with the SSRF guard at connect time.

One ``httpx.AsyncClient`` serves every delivery, on our own HTTP/1.1 transport
(:mod:`app.webhooks.http11`): connections are kept alive and reused per origin. When
private targets are not allowed, the transport resolves the host itself, refuses the
connection if any resolved address is forbidden (``app.webhooks.urls``), and connects to
a checked address, so that a name cannot resolve to a public address for the check and to
a private one for the connect. TLS still verifies the certificate against the host name
of the URL.

Redirects are not followed and the environment's proxy settings are ignored: either
could route a request past the guard.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import httpx

from app.webhooks.http11 import (
    Http11Transport,
    RefusedConnectError,
    Resolver,
    system_resolver,
)
from app.webhooks.urls import ForbiddenAddressError, IPAddress, check_resolved

__all__ = [
    "KEEPALIVE_EXPIRY_S",
    "RefusedConnectError",
    "Resolver",
    "build_http_client",
    "refusal_of",
    "system_resolver",
]

# How long an idle keep-alive connection is kept for the next delivery to the same origin.
KEEPALIVE_EXPIRY_S = 30.0


def refusal_of(exc: BaseException) -> ForbiddenAddressError | None:
    """The SSRF refusal behind an httpx error, if that is what it was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RefusedConnectError):
            return current.reason
        if isinstance(current, ForbiddenAddressError):
            return current
        current = current.__cause__ or current.__context__
    return None


def build_http_transport(
    *,
    max_connections: int,
    allow_private: bool,
    trusted_hosts: Collection[str] = (),
    resolver: Resolver | None = None,
    check: Callable[[str, Iterable[IPAddress]], list[IPAddress]] | None = None,
) -> Http11Transport:
    """The pooled keep-alive transport with the SSRF guard (unless ``allow_private``)."""
    return Http11Transport(
        max_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
        guard=not allow_private,
        resolver=resolver or system_resolver,
        check=check or check_resolved,
        trusted_hosts=trusted_hosts,
    )


def build_http_client(
    *,
    timeout: float,
    max_connections: int,
    allow_private: bool,
    trusted_hosts: Collection[str] = (),
    resolver: Resolver | None = None,
    check: Callable[[str, Iterable[IPAddress]], list[IPAddress]] | None = None,
    user_agent: str = "callctl-webhooks",
) -> httpx.AsyncClient:
    """The dispatcher's pooled client: keep-alive, bounded connections, no redirects."""
    transport = build_http_transport(
        max_connections=max_connections,
        allow_private=allow_private,
        trusted_hosts=trusted_hosts,
        resolver=resolver,
        check=check,
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": user_agent},
    )
