"""Crash recovery and the drain, on the test database with real sockets on loopback.

The "dead process" is a set of call rows as a previous process left them; the new process
is a real SipServer with the RecoveryAgent in front of a UA; the far end is a raw UDP
socket that the test reads and answers, so every header of the BYE / CANCEL / ACK / 480
is checked as it was on the wire. Waits are bounded reads of that socket, never sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.calls import commands
from app.calls.recovery import orphan_of, recover_calls
from app.calls.service import CallService
from app.calls.shutdown import GracefulShutdown, retry_after_for
from app.errors import ServiceUnavailableError
from app.media import PortPool, RtpSdhFactory
from app.sip.aio import SipServer, SipServerConfig
from app.sip.message import Request, Response, make_response
from app.sip.parser import parse_message
from app.store.db import Database
from app.store.models import Call
from app.store.repositories import CallRepository, EventRepository
from app.ua import ServerCore, UserAgent, UserAgentConfig
from app.ua.recovery import RecoveryAction, RecoveryAgent
from tests.calls.conftest import RTP_HIGH, RTP_LOW, TIMERS, WAIT, Commits, Harness, endpoint_config
from tests.sip.aio.sip_aio_peers import UdpPeer

Addr = tuple[str, int]


class Far:
    """The far end: a raw UDP socket that parses what it gets."""

    def __init__(self, peer: UdpPeer) -> None:
        self.peer = peer

    @property
    def addr(self) -> Addr:
        return self.peer.addr

    async def next(self) -> tuple[Request | Response, Addr]:
        data, source = await asyncio.wait_for(self.peer.queue.get(), WAIT)
        return parse_message(data), source

    async def request(self, method: str) -> tuple[Request, Addr]:
        """The next request of this method (retransmissions of others are skipped)."""
        while True:
            message, source = await self.next()
            if isinstance(message, Request) and message.method == method:
                return message, source

    async def response(self) -> tuple[Response, Addr]:
        while True:
            message, source = await self.next()
            if isinstance(message, Response):
                return message, source

    def send(self, message: Request | Response, to: Addr) -> None:
        self.peer.send(message.to_bytes(), to)


class Node:
    """The restarted process: SipServer, RecoveryAgent in front of a UA."""

    def __init__(self, server: SipServer, agent: RecoveryAgent, ua: UserAgent) -> None:
        self.server, self.agent, self.ua = server, agent, ua

    @property
    def addr(self) -> Addr:
        return self.server.local_addr


@pytest.fixture
async def far() -> AsyncIterator[Far]:
    peer = await UdpPeer.open()
    try:
        yield Far(peer)
    finally:
        peer.close()


@pytest.fixture
async def node() -> AsyncIterator[Node]:
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
        UserAgentConfig(contact_host=host, contact_port=port, t1=TIMERS.t1, t2=TIMERS.t2),
        RtpSdhFactory("127.0.0.1", "127.0.0.1", PortPool(RTP_LOW, RTP_HIGH)),
    )
    agent = RecoveryAgent(core, t1=TIMERS.t1, t2=TIMERS.t2)
    core.attach(agent)
    agent.attach(ua)
    try:
        yield Node(server, agent, ua)
    finally:
        await ua.close()
        await server.stop()


async def _store(database: Database, row: Call, *events: str) -> None:
    async with database.session() as session:
        await CallRepository(session).add(row)
        for kind in events:
            await EventRepository(session).append(call_id=row.id, type=kind, payload={"call": {}})
        await session.commit()


async def _ended(database: Database, call_id: str) -> tuple[Call, list[str]]:
    async with database.session() as session:
        row = await CallRepository(session).get(call_id)
        events = (await EventRepository(session).list_for_call(call_id)).items
    assert row is not None
    return row, [event.type for event in events]


def _established(call_factory: Callable[..., Call], far: Far, **overrides: Any) -> Call:
    host, port = far.addr
    values: dict[str, Any] = {
        "state": "established",
        "remote_tag": "far-tag",
        "remote_target": f"sip:bob@{host}:{port}",
        "route_set": [],
        "local_cseq": 7,
        "remote_cseq": 3,
        "peer_host": host,
        "peer_port": port,
        "invite_branch": "z9hG4bKdeadbeef01",
        "invite_cseq": 1,
    }
    values.update(overrides)
    return call_factory(**values)


# -- persistence: what the service keeps is enough to end the call ------------------------------


async def test_the_service_persists_the_dialog_of_a_call(harness: Harness) -> None:
    dial = commands.Dial(to=harness.peer.uri)
    call_id = (await harness.service.dial(dial)).call["id"]
    invitation = await harness.peer.next_invitation()
    await invitation.progress(180)
    await harness.until_event(call_id, "call.progress")
    async with harness.database.session() as session:
        ringing = await CallRepository(session).get(call_id)
    assert ringing is not None
    inviter = harness.service.session_of(call_id)
    assert inviter is not None
    invite = inviter._invite_request()
    assert invite is not None
    # RFC 3261 §9.1: what a CANCEL needs after a restart.
    assert ringing.invite_branch == invite.top_via.branch
    assert ringing.invite_cseq == invite.cseq.seq
    assert (ringing.peer_host, ringing.peer_port) == harness.peer.server.local_addr
    assert ringing.transport == "udp" and ringing.sip_call_id == invite.call_id
    assert ringing.local_tag == invite.from_.tag

    await invitation.accept()
    await harness.until_event(call_id, "call.answered")
    await harness.service.drain(within=0)  # nothing waits: just let the writer catch up
    snapshot = inviter.snapshot()
    async with harness.database.session() as session:
        answered = await CallRepository(session).get(call_id)
    assert answered is not None
    # RFC 3261 §12: what a BYE needs after a restart.
    assert answered.remote_tag == snapshot.remote_tag and answered.remote_tag
    assert answered.remote_target == snapshot.remote_target
    assert answered.local_cseq == snapshot.local_cseq
    assert answered.route_set == list(snapshot.route_set)
    orphan = orphan_of(answered)
    assert orphan.answered and orphan.snapshot.remote_target == snapshot.remote_target


# -- recovery on the wire ---------------------------------------------------------------------


async def test_an_established_call_gets_a_bye_from_its_stored_dialog(
    database: Database, commits: Commits, call_factory: Callable[..., Call], far: Far, node: Node
) -> None:
    host, port = far.addr
    row = _established(call_factory, far, route_set=[f"<sip:{host}:{port};lr>"])
    await _store(database, row, "call.initiated", "call.answered")
    service = CallService(database=database, notifier=commits)

    recovering = asyncio.create_task(service.recover(node.agent))
    bye, source = await far.request("BYE")
    # RFC 3261 §12.2.1.1: Request-URI = remote target, Route = route set, CSeq = local + 1.
    assert bye.uri == f"sip:bob@{host}:{port}"
    assert bye.headers.get_list("Route") == [f"<sip:{host}:{port};lr>"]
    assert bye.call_id == row.sip_call_id
    assert bye.from_.tag == row.local_tag and bye.to.tag == "far-tag"
    assert (bye.cseq.seq, bye.cseq.method) == (8, "BYE")
    far.send(make_response(bye, 200), source)
    assert await recovering == 1

    ended, types = await _ended(database, row.id)
    assert (ended.state, ended.end_cause, ended.end_by) == ("terminated", "shutdown", "system")
    assert ended.end_reason is not None and "BYE sent" in ended.end_reason
    assert ended.local_cseq == 8  # persisted: a second restart would not reuse it
    assert types == ["call.initiated", "call.answered", "call.ended"]
    assert commits.count == 1
    await _settled(far, node)
    assert (row.id, 200, "BYE") in node.agent.answers


async def test_a_ringing_outbound_call_gets_a_cancel_with_the_invite_branch(
    database: Database, call_factory: Callable[..., Call], far: Far, node: Node
) -> None:
    host, port = far.addr
    row = call_factory(
        state="establishing",
        remote_uri=f"sip:bob@{host}:{port}",
        to_uri=f"sip:bob@{host}:{port}",
        peer_host=host,
        peer_port=port,
        invite_branch="z9hG4bKringing0001",
        invite_cseq=1,
        local_cseq=1,
    )
    await _store(database, row, "call.initiated", "call.progress")
    service = CallService(database=database)
    assert await service.recover(node.agent) == 1

    cancel, source = await far.request("CANCEL")
    # RFC 3261 §9.1: same branch, sent-by, Request-URI, Call-ID, From, To (no tag), CSeq n.
    assert cancel.top_via.branch == "z9hG4bKringing0001"
    assert (cancel.top_via.host, cancel.top_via.port) == node.addr
    assert cancel.uri == f"sip:bob@{host}:{port}"
    assert cancel.call_id == row.sip_call_id
    assert cancel.from_.tag == row.local_tag and cancel.to.tag is None
    assert (cancel.cseq.seq, cancel.cseq.method) == (1, "CANCEL")
    # Unanswered over UDP, it is sent again (RFC 3261 §17.1.2.2).
    again, _ = await far.request("CANCEL")
    assert again.top_via.branch == cancel.top_via.branch

    far.send(make_response(cancel, 200), source)
    invite_like = Request(method="INVITE", uri=cancel.uri, headers=cancel.headers.copy())
    invite_like.headers.set("CSeq", "1 INVITE")
    terminated = make_response(invite_like, 487, to_tag="far-487")
    far.send(terminated, source)
    ack, _ = await far.request("ACK")
    # RFC 3261 §17.1.1.3: the ACK of a non-2xx is in the INVITE's transaction.
    assert ack.top_via.branch == "z9hG4bKringing0001"
    assert (ack.cseq.seq, ack.cseq.method) == (1, "ACK")
    assert ack.to.tag == "far-487" and ack.uri == cancel.uri
    far.send(terminated, source)  # a retransmitted 487 gets the same ACK
    again_ack, _ = await far.request("ACK")
    assert again_ack.to_bytes() == ack.to_bytes()
    await _settled(far, node)
    assert node.agent.pending == 0

    ended, types = await _ended(database, row.id)
    assert (ended.end_cause, ended.end_by) == ("shutdown", "system")
    assert ended.end_reason is not None and "CANCEL sent" in ended.end_reason
    assert types == ["call.initiated", "call.progress", "call.ended"]


async def test_a_2xx_crossing_the_recovery_cancel_is_acked_and_byed(
    database: Database, call_factory: Callable[..., Call], far: Far, node: Node
) -> None:
    host, port = far.addr
    row = call_factory(
        state="establishing",
        remote_uri=f"sip:bob@{host}:{port}",
        peer_host=host,
        peer_port=port,
        invite_branch="z9hG4bKcrossing001",
        invite_cseq=2,
        local_cseq=2,
    )
    await _store(database, row, "call.initiated")
    assert await CallService(database=database).recover(node.agent) == 1
    cancel, source = await far.request("CANCEL")
    invite_like = Request(method="INVITE", uri=cancel.uri, headers=cancel.headers.copy())
    invite_like.headers.set("CSeq", "2 INVITE")
    ok = make_response(invite_like, 200, to_tag="far-200")
    ok.headers.add("Contact", f"<sip:bob@{host}:{port}>")
    far.send(ok, source)
    ack, _ = await far.request("ACK")
    assert (ack.cseq.seq, ack.cseq.method) == (2, "ACK")
    assert ack.top_via.branch != "z9hG4bKcrossing001"  # RFC 3261 §13.2.2.4: its own branch
    bye, bye_source = await far.request("BYE")
    assert bye.to.tag == "far-200" and bye.from_.tag == row.local_tag
    assert bye.cseq.seq == 3 and bye.uri == f"sip:bob@{host}:{port}"
    far.send(make_response(bye, 200), bye_source)
    await _settled(far, node)
    assert (row.id, 200, "BYE") in node.agent.answers


async def test_an_unanswered_inbound_call_gets_a_480_from_the_stored_invite(
    database: Database, call_factory: Callable[..., Call], far: Far, node: Node
) -> None:
    host, port = far.addr
    invite_headers = {
        "Via": [f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKinbound01;rport={port};received={host}"],
        "From": ["<sip:carol@example.com>;tag=carol-1"],
        "To": ["<sip:callctl@127.0.0.1>"],
        "Call-ID": ["inbound-orphan@example.com"],
        "CSeq": ["5 INVITE"],
        "Contact": [f"<sip:carol@{host}:{port}>"],
    }
    row = call_factory(
        direction="inbound",
        state="initial",
        request_headers=invite_headers,
        sip_call_id="inbound-orphan@example.com",
        local_tag="ours-1",
        remote_tag="carol-1",
        peer_host=host,
        peer_port=port,
    )
    await _store(database, row, "call.initiated", "call.progress")
    assert await CallService(database=database).recover(node.agent) == 1
    rejected, source = await far.response()
    assert (rejected.status, rejected.cseq.seq, rejected.cseq.method) == (480, 5, "INVITE")
    assert rejected.to.tag == "ours-1" and rejected.top_via.branch == "z9hG4bKinbound01"
    # Unacknowledged over UDP, it is sent again (RFC 3261 §17.2.1 Timer G), then the ACK
    # (in the INVITE's transaction: same branch) stops it.
    again = await _status(far, 480)
    assert again.to_bytes() == rejected.to_bytes()
    ack = Request(method="ACK", uri="sip:callctl@127.0.0.1", headers=rejected.headers.copy())
    ack.headers.set("CSeq", "5 ACK")
    ack.headers.set("Max-Forwards", "70")
    far.send(ack, source)
    await _settled(far, node)
    assert node.agent.pending == 0
    # The caller's retransmitted INVITE gets the same answer, not a new call.
    invite = Request(method="INVITE", uri="sip:callctl@127.0.0.1", headers=rejected.headers.copy())
    invite.headers.set("To", "<sip:callctl@127.0.0.1>")
    invite.headers.set("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKinbound01;rport")
    invite.headers.set("Max-Forwards", "70")
    invite.headers.add("Contact", f"<sip:carol@{host}:{port}>")
    far.send(invite, source)
    once_more = await _status(far, 480)
    assert once_more.to.tag == "ours-1"
    assert not node.ua.sessions
    ended, types = await _ended(database, row.id)
    assert (ended.end_cause, ended.end_by) == ("shutdown", "system")
    assert ended.end_reason is not None and "480 sent" in ended.end_reason
    assert types == ["call.initiated", "call.progress", "call.ended"]


async def test_a_call_whose_invite_never_left_is_ended_without_sending(
    database: Database, commits: Commits, call_factory: Callable[..., Call], node: Node
) -> None:
    row = call_factory(state="initial")  # no event either: died right after the insert
    await _store(database, row)
    results = await recover_calls(
        database=database, notifier=commits, default_webhook_url=None, ender=node.agent
    )
    assert [(r.call_id, r.action) for r in results] == [(row.id, RecoveryAction.NONE)]
    ended, types = await _ended(database, row.id)
    assert (ended.state, ended.end_cause) == ("terminated", "shutdown")
    # Every call's stream starts with call.initiated and has no gaps.
    assert types == ["call.initiated", "call.ended"]
    assert node.agent.pending == 0


async def test_recovery_skips_the_calls_of_this_process(
    database: Database, call_factory: Callable[..., Call], far: Far
) -> None:
    mine, old = _established(call_factory, far), _established(call_factory, far)
    await _store(database, mine, "call.initiated")
    await _store(database, old, "call.initiated")
    results = await recover_calls(
        database=database, notifier=None, default_webhook_url=None, ender=None, skip={mine.id}
    )
    assert [r.call_id for r in results] == [old.id]
    assert (await _ended(database, mine.id))[0].state == "established"
    assert (await _ended(database, old.id))[0].state == "terminated"


# -- the drain ----------------------------------------------------------------------------------


async def test_draining_refuses_new_invites_with_retry_after(far: Far, node: Node) -> None:
    host, port = far.addr
    node.agent.refuse_new_invites(retry_after_for(2.5))
    invite = _invite(host, port, node.addr)
    far.send(invite, node.addr)
    refused = await _status(far, 503)
    assert refused.headers.get("Retry-After") == "3"
    assert node.agent.refused == 1 and not node.ua.sessions


async def test_drain_waits_for_live_calls_and_refuses_new_ones(harness: Harness) -> None:
    dial = commands.Dial(to=harness.peer.uri)
    call_id = (await harness.service.dial(dial)).call["id"]
    invitation = await harness.peer.next_invitation()
    await invitation.accept()
    await harness.until_event(call_id, "call.answered")

    draining = asyncio.create_task(harness.service.drain(within=WAIT))
    await asyncio.sleep(0)  # let the drain start (a scheduling step, not a timed wait)
    with pytest.raises(ServiceUnavailableError):
        await harness.service.dial(dial)
    await invitation.bye()  # the far end hangs up during the drain
    assert await draining == 0
    call = await harness.call(call_id)
    assert call["end"]["cause"] == "remote_bye"


async def test_graceful_shutdown_ends_what_is_left(harness: Harness) -> None:
    dial = commands.Dial(to=harness.peer.uri)
    call_id = (await harness.service.dial(dial)).call["id"]
    invitation = await harness.peer.next_invitation()
    await invitation.accept()
    await harness.until_event(call_id, "call.answered")
    shutdown = GracefulShutdown(service=harness.service, drain_seconds=0.0, user_agent=harness.ua)
    await shutdown.run()
    assert shutdown.done and harness.service.live_calls == 0
    call = await harness.call(call_id)
    assert (call["end"]["cause"], call["end"]["by"]) == ("shutdown", "system")
    assert (await harness.types(call_id))[-1] == "call.ended"
    end = await asyncio.wait_for(invitation.wait_ended(), WAIT)
    assert end.cause == "remote_bye"  # the far end got the BYE


# -- helpers -------------------------------------------------------------------------------------


async def _settled(far: Far, node: Node) -> None:
    """Return once the node has handled everything the far end sent so far.

    The server handles datagrams in arrival order, so the answer to an OPTIONS sent now
    comes after everything before it was processed (a barrier, not a timed wait).
    """
    host, port = far.addr
    text = (
        f"OPTIONS sip:callctl@{node.addr[0]}:{node.addr[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKbarrier{_counter()};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:t@example.com>;tag=b\r\n"
        f"To: <sip:callctl@{node.addr[0]}>\r\nCall-ID: barrier-{_counter()}@t\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    far.peer.send(text.encode(), node.addr)
    while True:
        response, _ = await far.response()
        if response.cseq.method == "OPTIONS":
            return


_count = 0


def _counter() -> int:
    global _count
    _count += 1
    return _count


async def _status(far: Far, status: int) -> Response:
    while True:
        response, _ = await far.response()
        if response.status == status:
            return response


def _invite(host: str, port: int, to: Addr) -> Request:
    text = (
        f"INVITE sip:callctl@{to[0]}:{to[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKnewcall01;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:dave@example.com>;tag=dave-1\r\n"
        f"To: <sip:callctl@{to[0]}:{to[1]}>\r\n"
        "Call-ID: new-during-drain@example.com\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:dave@{host}:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message
