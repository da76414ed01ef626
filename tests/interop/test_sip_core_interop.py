"""callctl's SIP core against SIPp on loopback, over UDP and TCP.

Our `SipServer` runs in the test's event loop on 127.0.0.1 (a free port); SIPp runs as a
bounded subprocess with the project's scenarios (tests/interop/scenarios). Besides SIPp's
own verdict (exit code, `<ereg check_it>` on headers), the tests read SIPp's message log to
check what it received byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from interop_support import ENDPOINT_CONFIG, RecordingTU
from sipp import SippMessage, SippResult, SippRun, run_sipp, same_bytes, scenario, start_sipp

from app.sip.aio import SipServer
from app.sip.events import RequestReceived, ResponseReceived
from app.sip.message import Headers, Request

TRANSPORTS = ["udp", "tcp"]

# Upper bound for a readiness probe of SIPp's listening socket.
_READY_TIMEOUT = 10.0


async def _run(
    server: SipServer, workdir: Path, name: str, transport: str, **kw: object
) -> SippResult:
    run = SippRun(
        scenario=scenario(name),
        workdir=workdir,
        remote=server.local_addr,
        transport="tcp" if transport == "tcp" else "udp",
        **kw,  # type: ignore[arg-type]
    )
    result = await run_sipp(run)
    assert result.ok, result.describe()
    return result


def _split(values: list[str]) -> set[str]:
    return {item.strip() for value in values for item in value.split(",") if item.strip()}


def _only(messages: list[SippMessage]) -> SippMessage:
    assert len(messages) == 1, [m.start_line for m in messages]
    return messages[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_options_answered_200_with_capabilities(
    sip_server: SipServer, sipp_workdir: Path, tu: RecordingTU, transport: str
) -> None:
    result = await _run(sip_server, sipp_workdir, "options.xml", transport)
    ok = _only(result.responses(200))
    assert ok.transport == transport.upper()
    assert _split(ok.header_values("Allow")) == set(ENDPOINT_CONFIG.allowed_methods)
    assert _split(ok.header_values("Accept")) == {"application/sdp"}
    assert _split(ok.header_values("Supported")) == {"replaces", "timer"}
    assert ok.header("Server") == "callctl-interop"
    # SIPp asked for rport (no) and sent from the address it put in Via: no received needed,
    # but the To tag must be there on a final response (RFC 3261 §8.2.6.2).
    assert ";tag=" in (ok.header("To") or "")
    assert not [e for e in tu.events if isinstance(e, RequestReceived)]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_malformed_invite_gets_400(
    sip_server: SipServer, sipp_workdir: Path, transport: str
) -> None:
    result = await _run(sip_server, sipp_workdir, "invite_bad_cseq.xml", transport)
    bad = _only(result.responses(400))
    assert "cseq" in bad.reason.lower(), bad.start_line  # the reason says what is wrong
    assert bad.header("Call-ID") == result.sent()[0].header("Call-ID")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_invite_with_unknown_require_gets_420(
    sip_server: SipServer, sipp_workdir: Path, transport: str
) -> None:
    result = await _run(sip_server, sipp_workdir, "invite_require.xml", transport)
    rejected = _only(result.responses(420))
    assert _split(rejected.header_values("Unsupported")) == {"foo"}
    assert [m.method for m in result.sent()] == ["INVITE", "ACK"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_retransmitted_invite_gets_the_same_response(
    sip_server: SipServer, sipp_workdir: Path, transport: str
) -> None:
    result = await _run(sip_server, sipp_workdir, "invite_retransmit.xml", transport)
    invites = [m for m in result.sent() if m.method == "INVITE"]
    assert len(invites) >= 2
    assert len({m.header("Via") for m in invites}) == 1  # same branch: a retransmission
    finals = result.responses(420)
    assert len(finals) >= 2
    assert same_bytes(finals), "\n---\n".join(m.data.decode() for m in finals)


async def test_retransmitted_options_gets_the_same_response(
    sip_server: SipServer, sipp_workdir: Path
) -> None:
    # UDP only: on TCP Timer J is zero, the transaction is gone when the copy arrives.
    result = await _run(sip_server, sipp_workdir, "options_retransmit.xml", "udp")
    retx = [m for m in result.responses(200) if "-retx" in (m.header("Via") or "")]
    other = [m for m in result.responses(200) if "-other" in (m.header("Via") or "")]
    assert len(retx) >= 2
    assert other
    assert same_bytes(retx), "\n---\n".join(m.data.decode() for m in retx)
    assert retx[0].data != other[0].data


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unknown_method_gets_501(
    sip_server: SipServer, sipp_workdir: Path, transport: str
) -> None:
    result = await _run(sip_server, sipp_workdir, "unknown_method.xml", transport)
    _only(result.responses(501))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bye_outside_a_dialog_gets_481(
    sip_server: SipServer, sipp_workdir: Path, tu: RecordingTU, transport: str
) -> None:
    result = await _run(sip_server, sipp_workdir, "bye_no_dialog.xml", transport)
    _only(result.responses(481))
    assert not [e for e in tu.events if isinstance(e, RequestReceived)]


async def _wait_tcp_listening(addr: tuple[str, int]) -> None:
    """Readiness probe for SIPp's TCP listener (an external process: nothing to await).

    Bounded; backs off from 10 ms. Not a timing assertion: only how long to keep trying.
    """
    deadline = time.monotonic() + _READY_TIMEOUT
    delay = 0.01
    while True:
        try:
            _, writer = await asyncio.open_connection(*addr)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_callctl_sends_options_to_sipp(
    sip_server: SipServer, sipp_workdir: Path, tu: RecordingTU, transport: str
) -> None:
    """SIPp as the server: our client transaction, and over TCP our outbound connection."""
    process = await start_sipp(
        SippRun(
            scenario=scenario("uas_options.xml"),
            workdir=sipp_workdir,
            transport="tcp" if transport == "tcp" else "udp",
        )
    )
    try:
        peer = ("127.0.0.1", process.local_port)
        if transport == "tcp":
            await _wait_tcp_listening(peer)
        # UDP needs no probe: Timer E retransmits until SIPp listens.
        param = "TCP" if transport == "tcp" else "UDP"  # upper case, as SIPp writes it
        uri = f"sip:sipp@127.0.0.1:{process.local_port};transport={param}"
        request = Request(
            method="OPTIONS",
            uri=uri,
            headers=Headers(
                [
                    ("From", "<sip:callctl@127.0.0.1>;tag=callctl-1"),
                    ("To", f"<{uri}>"),
                    ("Call-ID", f"callctl-options-{transport}@127.0.0.1"),
                    ("CSeq", "1 OPTIONS"),
                    ("Contact", f"<sip:callctl@127.0.0.1:{sip_server.local_addr[1]}>"),
                ]
            ),
        )
        tx = sip_server.send_request(request)
        event = await tu.next(ResponseReceived)
        assert isinstance(event, ResponseReceived)
        assert event.client_tx == tx
        assert event.response.status == 200
        assert event.transport.lower() == transport
        result = await process.wait()
    finally:
        await process.terminate()
    assert result.ok, result.describe()
    got = _only([m for m in result.received() if m.method == "OPTIONS"][:1])
    assert got.transport == transport.upper()
    via = got.header("Via") or ""
    assert via.startswith(f"SIP/2.0/{transport.upper()} 127.0.0.1:{sip_server.local_addr[1]}")
    assert ";rport" in via
    if transport == "tcp":
        assert sip_server.stats()["tcp_connections_opened"] == 1
