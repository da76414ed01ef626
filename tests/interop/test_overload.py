"""Admission control on the wire: with ``CALLCTL_MAX_CALLS=1`` and one call up, a new
INVITE gets 503 with a Retry-After, while the admitted call goes on and completes.

The whole service runs in-process on loopback (``inbound_support.running_service``). SIPp
holds the first call ringing (nobody answers it until the test accepts it over REST); a
second SIPp caller gets 503 + Retry-After and ACKs it (``scenarios/uac_shed.xml``); a raw
UDP caller sends its INVITE twice and gets the same 503 both times from the INVITE's
server transaction, with one decision only (RFC 3261 §17.2.1). Then the first call is
accepted and SIPp hangs up; with it gone, the next call is admitted again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from inbound_support import (
    EVENT_TIMEOUT,
    InboundService,
    check_stream,
    running_service,
    sipp_methods_sent,
    sipp_statuses,
    wait_initiated,
)

from app.calls.admission import AdmissionControl
from app.sip.message import Response
from app.sip.parser import parse_message

StartService = Callable[..., AbstractAsyncContextManager[InboundService]]

ANSWERED_STREAM = ["call.initiated", "call.progress", "call.answered", "call.ended"]


@pytest.fixture
def start(database_url: str, sipp_workdir: Path) -> StartService:
    def make(**overrides: Any) -> AbstractAsyncContextManager[InboundService]:
        return running_service(database_url=database_url, workdir=sipp_workdir, **overrides)

    return make


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.put_nowait(data)


@contextlib.asynccontextmanager
async def _udp_peer() -> AsyncIterator[tuple[asyncio.DatagramTransport, _Datagrams]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _Datagrams, local_addr=("127.0.0.1", 0)
    )
    try:
        yield transport, protocol
    finally:
        transport.close()


async def _next_final(protocol: _Datagrams) -> Response:
    while True:
        data = await asyncio.wait_for(protocol.received.get(), EVENT_TIMEOUT)
        message = parse_message(data)
        if isinstance(message, Response) and message.status >= 200:
            return message


def _raw_invite(target: tuple[str, int], local: tuple[str, int]) -> bytes:
    host, port = target
    lhost, lport = local
    lines = [
        f"INVITE sip:service@{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {lhost}:{lport};branch=z9hG4bK-shed-raw-1;rport",
        f"From: <sip:raw@{lhost}:{lport}>;tag=raw-shed",
        f"To: <sip:service@{host}:{port}>",
        "Call-ID: shed-raw-1@127.0.0.1",
        "CSeq: 1 INVITE",
        f"Contact: <sip:raw@{lhost}:{lport}>",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _raw_ack(invite: bytes, response: Response) -> bytes:
    """RFC 3261 §17.1.1.3: the ACK of a non-2xx, on the INVITE's branch, To with the tag."""
    head = invite.decode().split("\r\n")
    lines = [
        head[0].replace("INVITE", "ACK", 1),
        head[1],
        head[2],
        f"To: {response.headers.get('To')}",
        head[4],
        "CSeq: 1 ACK",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_invite_over_the_cap_gets_503_while_the_admitted_call_completes(
    start: StartService,
) -> None:
    async with start(max_calls=1) as service:
        admission: AdmissionControl = service.app.state.admission
        admitted = await service.start_sipp("uac_answer_bye.xml", case="admitted")
        (initiated,) = await wait_initiated(service, admitted)  # ringing: one call up

        # A second caller: 503 with a Retry-After, ACKed.
        refused = await service.run_sipp("uac_shed.xml", case="shed")
        assert refused.ok, refused.describe()
        finals = [m for m in refused.received() if (m.status or 0) >= 200]
        assert {m.status for m in finals} == {503}, refused.describe()
        assert int(finals[0].header("Retry-After") or "0") >= 1
        assert sipp_methods_sent(refused)[-1] == "ACK"

        # A raw caller sends its INVITE twice: the same 503 both times, one decision.
        async with _udp_peer() as (udp, protocol):
            local = udp.get_extra_info("sockname")[:2]
            invite = _raw_invite(service.sip_addr, local)
            udp.sendto(invite, service.sip_addr)
            first = await _next_final(protocol)
            udp.sendto(invite, service.sip_addr)  # a retransmission (same branch)
            second = await _next_final(protocol)
            udp.sendto(_raw_ack(invite, first), service.sip_addr)
        for response in (first, second):
            assert response.status == 503
            assert int(response.headers.get("Retry-After") or "0") >= 1
        assert first.to.tag and first.to.tag == second.to.tag
        assert admission.shed[("sip", "max_calls")] == 2  # SIPp's and the raw INVITE

        metrics = (await service.http.get("/metrics")).text
        assert 'callctl_calls_shed_total{reason="max_calls",source="sip"} 2.0' in metrics

        # The admitted call goes on: accepted, SIPp hangs up.
        await service.act_ok(initiated.call_id, "accept")
        result = await admitted.wait()
        assert result.ok, result.describe()
        (ended,) = await service.receiver.wait_ended(1)
        assert ended.call_id == initiated.call_id
        check_stream(service.receiver, initiated.call_id, ANSWERED_STREAM)
        assert ended.call["end"]["cause"] == "remote_bye"
        # Nothing of the refused calls reached the store or the receiver.
        assert [c["id"] for c in await service.list_calls()] == [initiated.call_id]
        assert {e.call_id for e in service.receiver.events()} == {initiated.call_id}

        # The call is gone: the next one is admitted again.
        service.receiver.answer("call.initiated", {"action": "accept"})
        again = await service.run_sipp("uac_answer_bye.xml", case="after")
        assert again.ok, again.describe()
        assert 200 in sipp_statuses(again)
        await service.receiver.wait_ended(2)
        assert admission.shed[("sip", "max_calls")] == 2
