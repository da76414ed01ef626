"""The pooled HTTP client of the webhook dispatcher, with the SSRF guard at connect time.

One ``httpx.AsyncClient`` serves every delivery: connections are kept alive and reused
per origin. When private targets are not allowed, the connection pool uses a network
backend that resolves the host itself, refuses the connection if any resolved address is
forbidden (``app.webhooks.urls``), and connects to a checked address, so that a name
cannot resolve to a public address for the check and to a private one for the connect.
TLS still verifies the certificate against the host name of the URL.

Redirects are not followed and the environment's proxy settings are ignored: either
could route a request past the guard.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

import httpcore
import httpx

from app.webhooks.urls import (
    ForbiddenAddressError,
    IPAddress,
    check_resolved,
    parse_host_literal,
)

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
# How long an idle keep-alive connection is kept for the next delivery to the same origin.
KEEPALIVE_EXPIRY_S = 30.0


class RefusedConnectError(httpcore.ConnectError):
    """Raised instead of connecting to a forbidden address.

    A ``ConnectError`` so that httpcore treats it as a failed connect; httpx re-raises it
    as ``httpx.ConnectError`` with this exception as ``__cause__``.
    """

    def __init__(self, reason: ForbiddenAddressError) -> None:
        super().__init__(str(reason))
        self.reason = reason


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses of ``host`` from the system resolver (getaddrinfo), in its order."""
    literal = parse_host_literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolve, check every address, then connect to a checked one."""

    def __init__(
        self,
        *,
        resolver: Resolver = system_resolver,
        trusted_hosts: Collection[str] = (),
        check: Callable[[str, Iterable[IPAddress]], list[IPAddress]] = check_resolved,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolver = resolver
        self._trusted = frozenset(host.lower() for host in trusted_hosts)
        self._check = check
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        bare = host[1:-1] if host.startswith("[") else host
        if bare.lower() in self._trusted:
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            async with asyncio.timeout(timeout):
                resolved = await self._resolver(bare, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {bare} timed out") from None
        try:
            addresses = self._check(bare, resolved)
        except ForbiddenAddressError as exc:
            raise RefusedConnectError(exc) from exc
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # check() returns at least one address
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on a :class:`GuardedNetworkBackend`."""

    def __init__(self, *, backend: httpcore.AsyncNetworkBackend, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        # httpx has no public knob for the network backend; the pool it built above is
        # replaced by an identical one on our backend (same arguments as httpx passes).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )


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
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    transport: httpx.AsyncBaseTransport
    if allow_private:
        transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    else:
        kwargs: dict[str, Any] = {"trusted_hosts": trusted_hosts}
        if resolver is not None:
            kwargs["resolver"] = resolver
        if check is not None:
            kwargs["check"] = check
        transport = GuardedTransport(backend=GuardedNetworkBackend(**kwargs), limits=limits)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": user_agent},
    )
