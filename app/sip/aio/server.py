"""The asyncio driver of the sans-IO `SipEndpoint` (the model is aioquic's asyncio protocol).

`SipServer` binds the transports, feeds every received message into the endpoint with
`now=loop.time()`, carries out what the endpoint asks (bytes to send, one timer deadline),
and hands the endpoint's events to the transaction user (TU). After every interaction it
does the same three things in `_pump()`: send `endpoint.outgoing()`, deliver
`endpoint.next_event()` until none is left, re-arm the single `loop.call_at` handle from
`endpoint.get_timer()`.

The event loop is whatever loop is running (uvicorn installs uvloop when it is present).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from app.sip.aio.target import DEFAULT_SIP_PORT, Target, is_ip_literal, select_target
from app.sip.aio.transport import (
    MAX_TCP_CONNECTIONS,
    TCP_CONNECT_TIMEOUT,
    TCP_IDLE_TIMEOUT,
    Addr,
    SipTransportLayer,
    TransportConfig,
    parse_transports,
)
from app.sip.endpoint import EndpointConfig, Outgoing, SipEndpoint
from app.sip.errors import SipParseError
from app.sip.events import (
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from app.sip.message import Message, Request, Response
from app.sip.parser import parse_message
from app.sip.trace import SipTrace
from app.sip.transactions.keys import ClientTransactionId, ServerTransactionId

__all__ = [
    "SipServer",
    "SipServerConfig",
    "SipSettings",
    "TransactionUser",
]

log = logging.getLogger(__name__)


class TransactionUser(Protocol):
    """The layer above the transactions (`app.ua`): receives every endpoint event."""

    def handle_event(self, event: Event) -> None: ...


class SipSettings(Protocol):
    """The fields of `app.settings.Settings` the server reads (no import of app.settings)."""

    @property
    def sip_host(self) -> str: ...
    @property
    def sip_port(self) -> int: ...
    @property
    def sip_transports(self) -> tuple[str, ...]: ...
    @property
    def public_address(self) -> str | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SipServerConfig:
    """Where to listen, what to advertise, TCP limits.

    `port=0` binds a port free for both UDP and TCP (tests). `advertised_host/port` go into
    the endpoint's Via/Contact instead of the bound address (NAT, wildcard bind).
    """

    host: str = "127.0.0.1"
    port: int = 5060
    transports: tuple[str, ...] = ("udp", "tcp")
    advertised_host: str | None = None
    advertised_port: int | None = None
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT
    tcp_connect_timeout: float = TCP_CONNECT_TIMEOUT
    max_tcp_connections: int = MAX_TCP_CONNECTIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "transports", parse_transports(self.transports))

    @classmethod
    def from_settings(cls, settings: SipSettings, **overrides: object) -> SipServerConfig:
        """From `CALLCTL_SIP_HOST`, `_SIP_PORT`, `_SIP_TRANSPORTS`, `_PUBLIC_ADDRESS`."""
        adv_host: str | None = None
        adv_port: int | None = None
        if settings.public_address:
            adv_host, adv_port = _split_hostport(settings.public_address)
        values: dict[str, object] = {
            "host": settings.sip_host,
            "port": settings.sip_port,
            "transports": tuple(settings.sip_transports),
            "advertised_host": adv_host,
            "advertised_port": adv_port,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def transport_config(self) -> TransportConfig:
        return TransportConfig(
            host=self.host,
            port=self.port,
            transports=self.transports,
            tcp_idle_timeout=self.tcp_idle_timeout,
            tcp_connect_timeout=self.tcp_connect_timeout,
            max_tcp_connections=self.max_tcp_connections,
        )


def _split_hostport(value: str) -> tuple[str, int | None]:
    value = value.strip()
    if value.startswith("["):  # [v6]:port
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port)
    return value, None


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@dataclass(slots=True)
class _ServerStats:
    events_dispatched: int = 0
    tu_errors: int = 0
    timer_fires: int = 0
    transport_errors_reported: int = 0
    core_errors: int = 0


class SipServer:
    """UDP/TCP sockets + one `SipEndpoint` + a TU, on the running event loop.

    `await start()` binds and creates the endpoint (with the bound port when `port=0`);
    `await stop()` closes the sockets and cancels the timer. Also an async context manager.
    The TU talks back through `send_request`, `send_response` and `send_stateless`, which
    may be called from inside `handle_event`.
    """

    def __init__(
        self,
        config: SipServerConfig,
        tu: TransactionUser,
        *,
        endpoint_config: EndpointConfig | None = None,
        trace: SipTrace | None = None,
    ) -> None:
        self.config = config
        self._tu = tu
        self._endpoint_template = endpoint_config or EndpointConfig()
        self._trace = trace
        self._transport = SipTransportLayer(config.transport_config(), self)
        self._endpoint: SipEndpoint | None = None
        self._running = False
        self._wall_offset = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._pumping = False
        self._stats = _ServerStats()
        # Transactions that keep a TCP connection from idle close, by connection address.
        self._tx_conn: dict[Hashable, Addr] = {}
        self._conn_users: dict[Addr, int] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._endpoint is not None:
            raise RuntimeError("SipServer already started")
        self._loop = asyncio.get_running_loop()
        self._wall_offset = time.time() - self._loop.time()
        await self._transport.start()
        host, port = self._transport.local_addr
        adv_host = self.config.advertised_host or host
        if self.config.advertised_host is None and _wildcard(host):
            adv_host = _guess_local_ip()
        cfg = dataclasses.replace(
            self._endpoint_template,
            local_host=adv_host,
            local_port=self.config.advertised_port or port,
            transports=self.config.transports,
        )
        self._endpoint = SipEndpoint(cfg, trace=self._trace)
        self._running = True
        log.info(
            "SIP listening on %s:%d (%s), loop %s",
            host, port, ",".join(self.config.transports), type(self._loop).__module__,
        )  # fmt: skip

    async def stop(self) -> None:
        """Close every socket and cancel the timer. Live transactions are abandoned (the
        endpoint is kept so `stats()` still reads); the server cannot be started again."""
        self._running = False
        self._cancel_timer()
        await self._transport.stop()
        self._tx_conn.clear()
        self._conn_users.clear()

    async def __aenter__(self) -> SipServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def endpoint(self) -> SipEndpoint:
        if self._endpoint is None or not self._running:
            raise RuntimeError("SipServer not running")
        return self._endpoint

    @property
    def timer_deadline(self) -> float | None:
        """The deadline the single `loop.call_at` handle is armed for, None when idle."""
        return self._timer_deadline

    def wall_time(self, now: float) -> float:
        """Unix time of a core `now` (loop clock), e.g. for `TraceRecord.time`."""
        return now + self._wall_offset

    @property
    def local_addr(self) -> Addr:
        """The bound (host, port)."""
        return self._transport.local_addr

    @property
    def transport_layer(self) -> SipTransportLayer:
        return self._transport

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # -- the TU's API ------------------------------------------------------------------

    def send_request(
        self, request: Request, dest: Addr | None = None, transport: str | None = None
    ) -> ClientTransactionId:
        """Start a client transaction for `request`.

        Without `transport`, it comes from the next hop's URI (first Route, else the
        Request-URI): its `transport` parameter in any case (RFC 3261 §19.1.4), else UDP, or
        TCP for a request too big for UDP (§18.1.1). Without `dest`, the next hop's host
        must be an IP address (use `await resolve(...)` for names).
        """
        target = self._target_for(request, dest, transport)
        endpoint = self.endpoint
        tx = endpoint.send_request(request, target.addr, target.transport, self._now())
        if target.transport == "tcp":
            self._hold_connection(tx, target.addr)
        self._pump()
        return tx

    def send_response(self, server_tx: ServerTransactionId, response: Response) -> None:
        """Answer the request of `server_tx` (from a `RequestReceived`)."""
        self.endpoint.send_response(server_tx, response, self._now())
        if response.status >= 200:
            self._release_connection(server_tx)
        self._pump()

    def send_stateless(
        self, msg: Message, dest: Addr | None = None, transport: str | None = None
    ) -> None:
        """Send outside any transaction (ACK for a 2xx, 2xx retransmissions by the TU).

        A request may leave `dest`/`transport` out: they come from its URI as for
        `send_request`. A response needs both.
        """
        if isinstance(msg, Request):
            target = self._target_for(msg, dest, transport)
            dest, transport = target.addr, target.transport
        elif dest is None or transport is None:
            raise ValueError("a stateless response needs dest and transport")
        self.endpoint.send_stateless(msg, dest, transport.lower(), self._now())
        self._pump()

    def send_cancel(
        self, invite_tx: ClientTransactionId, *, reason: str | None = None
    ) -> ClientTransactionId | None:
        """CANCEL a pending INVITE (RFC 3261 §9.1); see `SipEndpoint.send_cancel`."""
        cancel_tx = self.endpoint.send_cancel(invite_tx, self._now(), reason=reason)
        self._pump()
        return cancel_tx

    async def resolve(self, request: Request) -> Target:
        """Next hop of `request` with its host resolved (A/AAAA only, no RFC 3263 SRV)."""
        target = select_target(request, tcp_enabled="tcp" in self.config.transports)
        host = target.addr[0]
        if is_ip_literal(host):
            return target
        assert self._loop is not None
        kind = socket.SOCK_STREAM if target.transport == "tcp" else socket.SOCK_DGRAM
        infos = await self._loop.getaddrinfo(host, target.addr[1], type=kind)
        if not infos:
            raise OSError(errno.EHOSTUNREACH, f"cannot resolve {host}")
        sockaddr = infos[0][4]
        return Target(addr=(str(sockaddr[0]), int(sockaddr[1])), transport=target.transport)

    def _target_for(self, request: Request, dest: Addr | None, transport: str | None) -> Target:
        if dest is not None and transport is not None:
            return Target(addr=dest, transport=transport.lower())
        target = select_target(request, tcp_enabled="tcp" in self.config.transports)
        if transport is not None:
            target = Target(addr=target.addr, transport=transport.lower())
        if dest is not None:
            target = Target(addr=dest, transport=target.transport)
        if target.transport not in self.config.transports:
            raise ValueError(f"transport {target.transport!r} is not enabled")
        if not is_ip_literal(target.addr[0]):
            raise ValueError(f"{target.addr[0]!r} is not an IP address; use resolve() first")
        return target

    # -- metrics -----------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters for /metrics: transport counters, endpoint counters, driver counters."""
        out = self._transport.stats_dict()
        out.update(dataclasses.asdict(self._stats))
        if self._endpoint is not None:
            for key, value in self._endpoint.stats.items():
                out[f"endpoint_{key}"] = value
        return out

    # -- TransportSink -----------------------------------------------------------------

    def message_received(self, data: bytes, addr: Addr, transport: str) -> None:
        endpoint = self._endpoint
        if endpoint is None or not self._running:
            return
        try:
            endpoint.receive(data, addr, transport, self._now())
        except Exception:
            # A core bug hit by one (maybe hostile) message must not take the socket down.
            self._stats.core_errors += 1
            log.exception("SIP core failed on a message from %s:%d/%s", *addr, transport)
        finally:
            self._pump()

    def send_failed(
        self, data: bytes, addr: Addr, transport: str, error: OSError, token: object
    ) -> None:
        endpoint = self._endpoint
        if endpoint is None or not self._running:
            return
        self._stats.transport_errors_reported += 1
        tx = token if isinstance(token, ClientTransactionId | ServerTransactionId) else None
        # RFC 3261 §17.1.4 / §17.2.4: the transaction learns of the failure and tells the TU.
        detail = f"{transport.upper()} {addr[0]}:{addr[1]}: {error.strerror or error}"
        try:
            endpoint.report_transport_error(tx, detail, self._now())
        except Exception:
            self._stats.core_errors += 1
            log.exception("SIP core failed on a transport error")
        finally:
            self._pump()

    def connection_in_use(self, addr: Addr, transport: str) -> bool:
        return self._conn_users.get(addr, 0) > 0

    # -- driving the endpoint ----------------------------------------------------------

    def _pump(self) -> None:
        """Send what the endpoint wants sent, deliver its events, re-arm its timer."""
        if self._pumping:
            return  # a TU call from inside handle_event: the outer pump goes on draining
        endpoint = self._endpoint
        if endpoint is None or not self._running:
            return
        self._pumping = True
        try:
            while True:
                for out in endpoint.outgoing():
                    self._send(out)
                event = endpoint.next_event()
                if event is None:
                    break
                self._observe(event)
                self._stats.events_dispatched += 1
                try:
                    self._tu.handle_event(event)
                except Exception:
                    # A TU bug must not stop the transports: log, count, go on.
                    self._stats.tu_errors += 1
                    log.exception("TU failed on %s", type(event).__name__)
        finally:
            self._pumping = False
        self._arm_timer()

    def _send(self, out: Outgoing) -> None:
        addr = out.addr
        transport = out.transport.lower()
        if (
            transport == "tcp"
            and out.data.startswith(b"SIP/2.0 ")
            and not self._transport.has_connection(addr)
        ):
            # RFC 3261 §18.2.2: the connection the request came on is gone; open one to
            # the Via's received address (else its host) and sent-by port instead.
            addr = _response_fallback(out.data) or addr
        self._transport.send(out.data, addr, transport, out.tx)

    def _arm_timer(self) -> None:
        endpoint = self._endpoint
        deadline = endpoint.get_timer() if endpoint is not None and self._running else None
        if deadline == self._timer_deadline and (deadline is None or self._timer is not None):
            return
        self._cancel_timer()
        if deadline is not None:
            assert self._loop is not None
            self._timer_deadline = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_deadline = None

    def _on_timer(self) -> None:
        deadline = self._timer_deadline
        self._timer = None
        self._timer_deadline = None
        endpoint = self._endpoint
        if endpoint is None or not self._running:
            return
        self._stats.timer_fires += 1
        # The loop may run a handle a clock tick before its deadline; never hand the core a
        # `now` earlier than the deadline it asked for, or it would ask again at once.
        now = self._now()
        if deadline is not None and now < deadline:
            now = deadline
        try:
            endpoint.handle_timer(now)
        except Exception:
            self._stats.core_errors += 1
            log.exception("SIP core failed in handle_timer")
        finally:
            self._pump()

    # -- which transactions hold which TCP connection ----------------------------------

    def _hold_connection(self, tx: Hashable, addr: Addr) -> None:
        if tx in self._tx_conn:
            return
        self._tx_conn[tx] = addr
        self._conn_users[addr] = self._conn_users.get(addr, 0) + 1

    def _release_connection(self, tx: Hashable) -> None:
        addr = self._tx_conn.pop(tx, None)
        if addr is None:
            return
        left = self._conn_users.get(addr, 0) - 1
        if left > 0:
            self._conn_users[addr] = left
        else:
            self._conn_users.pop(addr, None)

    def _observe(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            if event.transport.lower() == "tcp":
                self._hold_connection(event.server_tx, event.source)
        elif isinstance(event, CancelReceived):
            if event.invite_answered is False:
                self._release_connection(event.server_tx)  # the endpoint sent the 487
        elif isinstance(event, ResponseReceived):
            if event.client_tx is not None and event.response.status >= 200:
                self._release_connection(event.client_tx)
        elif isinstance(event, TransactionTimedOut | TransportErrorOccurred):
            if event.tx is not None:
                self._release_connection(event.tx)


def _response_fallback(data: bytes) -> Addr | None:
    """Where RFC 3261 §18.2.2 sends a response over a new connection, None if unknown."""
    try:
        message = parse_message(data, stream=True)
        via = message.top_via
    except SipParseError:
        return None
    host = (via.received or via.host).strip("[]")
    if not is_ip_literal(host):
        return None
    return (host, via.port or DEFAULT_SIP_PORT)


def _guess_local_ip() -> str:
    """The address the host would use toward the outside (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1, RFC 5737: never routed for real
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"
