"""The seam below the user agent: ``SipCore`` (what the UA needs of the SIP stack).

``SipCore`` is implemented by :class:`ServerCore` over a running
:class:`app.sip.aio.SipServer`, and by the in-memory link of the tests (fake clock).
The UA is the transaction user (TU): it receives every endpoint event through
``UserAgent.handle_event`` and answers through this protocol.

Wiring with the real server (the TU must exist before the server, the server before the
core can send)::

    core = ServerCore()
    server = SipServer(server_config, core, endpoint_config=...)
    core.bind(server)
    ua = UserAgent(core, ua_config, sdh_factory, delegate)
    core.attach(ua)
    await server.start()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from app.sip.aio.server import SipServer
from app.sip.aio.target import Target
from app.sip.endpoint import Addr, SipEndpoint
from app.sip.events import Event
from app.sip.message import Message, Request, Response
from app.sip.transactions.keys import ClientTransactionId, ServerTransactionId

__all__ = ["Cancellable", "ServerCore", "SipCore", "TransactionUser"]

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    """A pending timer (``asyncio.TimerHandle`` fits)."""

    def cancel(self) -> None: ...


class TransactionUser(Protocol):
    def handle_event(self, event: Event) -> None: ...


class SipCore(Protocol):
    """What the UA calls below it. Transports are given lower case ("udp", "tcp")."""

    @property
    def endpoint(self) -> SipEndpoint: ...

    def send_request(
        self, request: Request, dest: Addr | None = None, transport: str | None = None
    ) -> ClientTransactionId: ...

    def send_cancel(
        self, invite_tx: ClientTransactionId, *, reason: str | None = None
    ) -> ClientTransactionId | None: ...

    def send_response(self, server_tx: ServerTransactionId, response: Response) -> None: ...

    def send_stateless(self, msg: Message, dest: Addr, transport: str) -> None: ...

    async def resolve(self, request: Request) -> Target: ...

    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


class ServerCore:
    """``SipCore`` over a :class:`SipServer`; also the server's TU, forwarding to the UA.

    ``SipServer`` offers the sending half; the clock and the TU timers come from the
    running event loop (the same clock the server hands the endpoint as ``now``).
    """

    def __init__(self, server: SipServer | None = None) -> None:
        self._server = server
        self._tu: TransactionUser | None = None

    def bind(self, server: SipServer) -> None:
        self._server = server

    def attach(self, tu: TransactionUser) -> None:
        self._tu = tu

    @property
    def server(self) -> SipServer:
        if self._server is None:
            raise RuntimeError("ServerCore is not bound to a SipServer")
        return self._server

    # -- TransactionUser (the server calls this) -------------------------------------

    def handle_event(self, event: Event) -> None:
        if self._tu is None:
            log.warning("SIP event %s before the user agent is attached", type(event).__name__)
            return
        self._tu.handle_event(event)

    # -- SipCore -----------------------------------------------------------------------

    @property
    def endpoint(self) -> SipEndpoint:
        return self.server.endpoint

    def send_request(
        self, request: Request, dest: Addr | None = None, transport: str | None = None
    ) -> ClientTransactionId:
        return self.server.send_request(request, dest, transport)

    def send_cancel(
        self, invite_tx: ClientTransactionId, *, reason: str | None = None
    ) -> ClientTransactionId | None:
        return self.server.send_cancel(invite_tx, reason=reason)

    def send_response(self, server_tx: ServerTransactionId, response: Response) -> None:
        self.server.send_response(server_tx, response)

    def send_stateless(self, msg: Message, dest: Addr, transport: str) -> None:
        self.server.send_stateless(msg, dest, transport)

    async def resolve(self, request: Request) -> Target:
        return await self.server.resolve(request)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_later(delay, callback)
