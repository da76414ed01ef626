"""``ServerCore``: two user agents over real SipServers on loopback UDP (bounded waits)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from app.sip.aio.server import SipServer, SipServerConfig
from app.sip.endpoint import EndpointConfig
from app.sip.timers import TimerConfig
from app.ua import (
    EndBy,
    EndCause,
    Inviter,
    ServerCore,
    Session,
    SessionDelegate,
    SessionEnd,
    SessionState,
    UserAgent,
    UserAgentConfig,
    UserAgentDelegate,
)
from app.ua.invitation import Invitation
from tests.ua.conftest import TrackingFactory

WAIT = 10.0  # upper bound only: every wait ends as soon as its event happened


class Waiter(SessionDelegate):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.answered: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[SessionEnd] = loop.create_future()

    def on_answered(self, session: Session) -> None:
        if not self.answered.done():
            self.answered.set_result(None)

    def on_ended(self, session: Session, end: SessionEnd) -> None:
        if not self.ended.done():
            self.ended.set_result(end)


class Answerer(UserAgentDelegate):
    """Accepts every call at once."""

    def __init__(self) -> None:
        self.invited: asyncio.Future[Invitation] = asyncio.get_running_loop().create_future()
        self.waiter = Waiter()
        self._tasks: set[asyncio.Task[None]] = set()

    def on_invite(self, invitation: Invitation) -> None:
        invitation.delegate = self.waiter
        task = asyncio.get_running_loop().create_task(invitation.accept())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if not self.invited.done():
            self.invited.set_result(invitation)


async def start_ua(
    stack: AsyncExitStack, factory: TrackingFactory, delegate: UserAgentDelegate | None
) -> UserAgent:
    core = ServerCore()
    server = SipServer(
        SipServerConfig(host="127.0.0.1", port=0, transports=("udp",)),
        core,
        endpoint_config=EndpointConfig(timers=TimerConfig(t1=0.5)),
    )
    core.bind(server)
    await server.start()
    stack.push_async_callback(server.stop)
    host, port = server.local_addr
    ua = UserAgent(core, UserAgentConfig(contact_host=host, contact_port=port), factory, delegate)
    core.attach(ua)
    return ua


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


async def test_call_over_real_udp(stack: AsyncExitStack, factory: TrackingFactory) -> None:
    answerer = Answerer()
    bob = await start_ua(stack, factory, answerer)
    alice = await start_ua(stack, factory, None)
    bob_port = bob.config.contact_port
    inviter = Inviter(alice, f"sip:bob@127.0.0.1:{bob_port}", timeout=WAIT)
    waiter = Waiter()
    inviter.delegate = waiter
    await inviter.invite()
    await asyncio.wait_for(waiter.answered, WAIT)
    invitation = await asyncio.wait_for(answerer.invited, WAIT)
    assert inviter.state is SessionState.ESTABLISHED
    await asyncio.wait_for(answerer.waiter.answered, WAIT)
    await inviter.bye()
    end = await asyncio.wait_for(waiter.ended, WAIT)
    assert end == SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
    assert await asyncio.wait_for(answerer.waiter.ended, WAIT) == SessionEnd(
        EndCause.REMOTE_BYE, EndBy.REMOTE
    )
    assert invitation.snapshot().remote_tag == inviter.local_tag
    assert bob.sessions == {} and alice.sessions == {}


async def test_cancel_over_real_udp(stack: AsyncExitStack, factory: TrackingFactory) -> None:
    class Ringer(UserAgentDelegate):
        def __init__(self) -> None:
            self.invited: asyncio.Future[Invitation] = asyncio.get_running_loop().create_future()

        def on_invite(self, invitation: Invitation) -> None:
            self.invited.set_result(invitation)

    ringer = Ringer()
    bob = await start_ua(stack, factory, ringer)
    alice = await start_ua(stack, factory, None)
    inviter = Inviter(alice, f"sip:bob@127.0.0.1:{bob.config.contact_port}")
    waiter = Waiter()
    inviter.delegate = waiter
    await inviter.invite()
    invitation = await asyncio.wait_for(ringer.invited, WAIT)
    bob_waiter = Waiter()
    invitation.delegate = bob_waiter
    await inviter.cancel()  # ServerCore.send_cancel
    assert await asyncio.wait_for(waiter.ended, WAIT) == SessionEnd(EndCause.CANCELED, EndBy.LOCAL)
    assert await asyncio.wait_for(bob_waiter.ended, WAIT) == SessionEnd(
        EndCause.CANCELED, EndBy.REMOTE
    )
