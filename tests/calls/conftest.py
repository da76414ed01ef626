"""Fixtures of the call service tests: the service's UA and a peer UA on loopback.

Both user agents are the real ones (app.ua) over real SipServers on 127.0.0.1 (free ports)
with real RTP media handlers; the service writes to this test's database. The peer is
driven by the test: its inbound calls land in a queue, to accept, reject or hang up.
Waiting is on the service's commits (its notifier), always bounded, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.calls.service import CallService
from app.media import PortPool, RtpSdhFactory
from app.sip.aio import SipServer, SipServerConfig
from app.sip.endpoint import EndpointConfig
from app.sip.timers import TimerConfig
from app.store.db import Database
from app.store.models import CallEvent
from app.store.repositories import CallRepository, EventRepository
from app.store.resources import call_resource
from app.ua import Invitation, ServerCore, UserAgent, UserAgentConfig, UserAgentDelegate
from app.webhooks.outbox import OutboxItem

#: Upper bound of any wait in these tests (a failure bound, not a timing assertion).
WAIT = 10.0
# Short timers so that the 64*T1 guards of the UA end tests quickly if something is lost.
TIMERS = TimerConfig(t1=0.1, t2=0.4, t4=0.5)
RTP_LOW, RTP_HIGH = 31000, 31999


class Commits:
    """The service's notifier: wakes waiters after every commit that added events."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def notify(self, events: Sequence[OutboxItem] = ()) -> None:
        self.count += 1
        self._event.set()

    async def until(self, predicate: Callable[[], Awaitable[bool]], within: float = WAIT) -> None:
        async with asyncio.timeout(within):
            while True:
                self._event.clear()
                if await predicate():
                    return
                await self._event.wait()


class PeerDelegate(UserAgentDelegate):
    def __init__(self) -> None:
        self.invitations: asyncio.Queue[Invitation] = asyncio.Queue()

    def on_invite(self, invitation: Invitation) -> None:
        self.invitations.put_nowait(invitation)


@dataclass
class Peer:
    """The far end: a real UA whose inbound calls the test answers."""

    server: SipServer
    ua: UserAgent
    delegate: PeerDelegate

    @property
    def uri(self) -> str:
        host, port = self.server.local_addr
        return f"sip:bob@{host}:{port}"

    async def next_invitation(self) -> Invitation:
        return await asyncio.wait_for(self.delegate.invitations.get(), WAIT)


@dataclass
class Harness:
    database: Database
    service: CallService
    commits: Commits
    peer: Peer
    server: SipServer
    ua: UserAgent
    seen: list[Any] = field(default_factory=list)

    @property
    def uri(self) -> str:
        host, port = self.server.local_addr
        return f"sip:callctl@{host}:{port}"

    async def events(self, call_id: str) -> list[CallEvent]:
        async with self.database.session() as session:
            return list((await EventRepository(session).list_for_call(call_id)).items)

    async def types(self, call_id: str) -> list[str]:
        return [event.type for event in await self.events(call_id)]

    async def call(self, call_id: str) -> dict[str, Any]:
        async with self.database.session() as session:
            row = await CallRepository(session).get(call_id)
            assert row is not None
            return call_resource(row)

    async def until_event(self, call_id: str, event_type: str) -> list[CallEvent]:
        """Wait until the call has an event of this type; return all its events."""
        found: list[CallEvent] = []

        async def has() -> bool:
            found[:] = await self.events(call_id)
            return any(event.type == event_type for event in found)

        await self.commits.until(has)
        return found

    async def until_types(self, call_id: str, expected: Sequence[str]) -> list[CallEvent]:
        found: list[CallEvent] = []

        async def has() -> bool:
            found[:] = await self.events(call_id)
            return len(found) >= len(expected)

        await self.commits.until(has)
        assert [event.type for event in found] == list(expected)
        return found


def endpoint_config() -> EndpointConfig:
    return EndpointConfig(
        timers=TIMERS,
        allowed_methods=("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "PRACK", "UPDATE"),
        supported=("100rel",),
        user_agent="callctl-test",
    )


async def start_ua(
    delegate: UserAgentDelegate | None, pool: PortPool, **config: Any
) -> tuple[SipServer, UserAgent]:
    core = ServerCore()
    server = SipServer(
        SipServerConfig(host="127.0.0.1", port=0, transports=("udp",)),
        core,
        endpoint_config=endpoint_config(),
    )
    core.bind(server)
    await server.start()
    host, port = server.local_addr
    ua = UserAgent(
        core,
        UserAgentConfig(
            contact_host=host,
            contact_port=port,
            t1=TIMERS.t1,
            t2=TIMERS.t2,
            t4=TIMERS.t4,
            **config,
        ),
        RtpSdhFactory("127.0.0.1", "127.0.0.1", pool),
        delegate,
    )
    core.attach(ua)
    return server, ua


@pytest.fixture
def commits() -> Commits:
    return Commits()


@pytest.fixture
async def harness(database: Database, commits: Commits) -> AsyncIterator[Harness]:
    pool = PortPool(RTP_LOW, RTP_HIGH)
    peer_delegate = PeerDelegate()
    peer_server, peer_ua = await start_ua(peer_delegate, pool, user="bob")
    service = CallService(database=database, notifier=commits)
    server, ua = await start_ua(service, pool, inbound_timeout=30.0)
    service.bind(ua)
    try:
        yield Harness(
            database=database,
            service=service,
            commits=commits,
            peer=Peer(server=peer_server, ua=peer_ua, delegate=peer_delegate),
            server=server,
            ua=ua,
        )
    finally:
        service.unbind()
        await ua.close()
        await peer_ua.close()
        await service.drain(within=WAIT)
        await service.close()
        await server.stop()
        await peer_server.stop()
