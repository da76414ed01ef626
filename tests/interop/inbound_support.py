"""The whole service on loopback for the inbound interop tests, and the checks they share.

:func:`running_service` starts callctl in-process (``app.main.create_app`` with its
lifespan: database, webhook dispatcher, call service, SIP on a free 127.0.0.1 UDP port),
with a :class:`~webhook_receiver.WebhookReceiver` as ``CALLCTL_WEBHOOK_URL`` and a signing
secret, and gives the test an HTTP client on the REST API plus helpers to run SIPp UAC
scenarios (``scenarios/uac_*.xml``) against the SIP port. Everything is bounded: SIPp by
the harness in :mod:`sipp`, waits by the receiver's ``wait_for`` timeouts.

The check helpers hold what every case asserts about a finished call: the webhook event
stream (types in order, one call id, sequences 1..n without gaps, signatures valid), the
same stream through ``GET /v1/calls/{id}/events``, and the call object's end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sipp import (
    SippMessage,
    SippProcess,
    SippResult,
    SippRun,
    parse_message_log,
    run_sipp,
    scenario,
    start_sipp,
)
from webhook_receiver import Delivery, WebhookReceiver

from app.main import create_app
from app.settings import Settings

#: The webhook signing secret of the service under test (Standard Webhooks format).
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"callctl-inbound-interop-key").decode()

#: Bound of one SIPp run of a single call (SIPp's -timeout; the harness adds its own).
SIPP_TIMEOUT = 20.0

#: A failure bound for waiting on an event (liveness, never a timing assertion).
EVENT_TIMEOUT = 15.0

#: Headers of the SIPp INVITEs that the call object must echo in request.headers.
CASE_HEADER = "X-Interop-Case"


@dataclass(slots=True)
class InboundService:
    """A running callctl with its webhook receiver; REST through ``http``."""

    app: FastAPI
    http: httpx.AsyncClient
    receiver: WebhookReceiver
    settings: Settings
    workdir: Path

    @property
    def sip_addr(self) -> tuple[str, int]:
        server = self.app.state.sip_server
        assert server is not None, "SIP is not running in the app under test"
        host, port = server.local_addr
        return str(host), int(port)

    # -- REST ----------------------------------------------------------------------------

    async def get_call(self, call_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/calls/{call_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def act(
        self, call_id: str, action: str, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        return await self.http.post(f"/v1/calls/{call_id}/{action}", json=dict(body or {}))

    async def act_ok(
        self, call_id: str, action: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        response = await self.act(call_id, action, body)
        assert response.status_code == 200, f"{action}: {response.status_code} {response.text}"
        call: dict[str, Any] = response.json()
        return call

    async def api_events(self, call_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/v1/calls/{call_id}/events")
        assert response.status_code == 200, response.text
        body = response.json()
        events = body["data"] if isinstance(body, dict) else body
        assert isinstance(events, list), body
        return events

    async def list_calls(self, **params: str) -> list[dict[str, Any]]:
        response = await self.http.get("/v1/calls", params={"limit": "100", **params})
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    # -- SIPp ----------------------------------------------------------------------------

    def sipp_run(
        self,
        name: str,
        *,
        case: str,
        calls: int = 1,
        timeout: float = SIPP_TIMEOUT,
        keys: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> SippRun:
        """A SIPp UAC run of ``scenarios/<name>`` against our SIP port, one call by default.

        ``case`` goes into the INVITE's X-Interop-Case header (the ``[case]`` key).
        """
        return SippRun(
            scenario=scenario(name),
            workdir=self.workdir,
            remote=self.sip_addr,
            transport="udp",
            calls=calls,
            timeout=timeout,
            keys={"case": case, **(keys or {})},
            extra_args=tuple(extra_args),
        )

    async def start_sipp(self, name: str, **kw: Any) -> SippProcess:
        return await start_sipp(self.sipp_run(name, **kw))

    async def run_sipp(self, name: str, **kw: Any) -> SippResult:
        return await run_sipp(self.sipp_run(name, **kw))


@contextlib.asynccontextmanager
async def running_service(
    *, database_url: str, workdir: Path, **overrides: Any
) -> AsyncIterator[InboundService]:
    """callctl with SIP on a free loopback UDP port and a webhook receiver; stopped after.

    ``overrides`` are Settings fields (the CALLCTL_* variables in lower case without the
    prefix), e.g. ``inbound_timeout=2.0`` or ``t1_ms=100``.
    """
    receiver = WebhookReceiver(secret=WEBHOOK_SECRET)
    await receiver.start()
    try:
        values: dict[str, Any] = {
            "database_url": database_url,
            "sip_host": "127.0.0.1",
            "sip_transports": "udp",
            "webhook_url": receiver.url(),
            "webhook_secret": WEBHOOK_SECRET,
            "webhook_allow_private": True,
            "webhook_retry_schedule": "0.2,0.5,1",
            "webhook_timeout": 5.0,
            "t1_ms": 100,
            "t2_ms": 400,
            # Short enough that a call nobody answers (a missing feature) fails fast with 480.
            "inbound_timeout": 10.0,
        }
        values.update(overrides)
        settings = Settings(**values)
        app = create_app(settings, sip_port=0)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://callctl.test", timeout=10.0
            ) as http:
                yield InboundService(
                    app=app, http=http, receiver=receiver, settings=settings, workdir=workdir
                )
    finally:
        await receiver.stop()


# -- checks -----------------------------------------------------------------------------


def check_stream(receiver: WebhookReceiver, call_id: str, types: Sequence[str]) -> list[Delivery]:
    """The call's webhook events are exactly ``types`` in order, sequences 1..n, signed."""
    events = receiver.events(call_id)
    got = [(e.sequence, e.type) for e in events]
    assert [e.type for e in events] == list(types), got
    # API.md: sequence starts at 1 for every call and has no gaps; delivery is in order.
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), got
    for event in events:
        assert event.signature_ok is True, f"bad signature on {event.type}: {event.headers}"
        assert event.headers.get("webhook-id") == event.event_id
        assert event.event_id.startswith("evt_"), event.event_id
        assert event.call["id"] == call_id
        assert event.call["direction"] == "inbound"
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids), ids
    return events


async def check_api_events(
    service: InboundService, call_id: str, types: Sequence[str]
) -> list[dict[str, Any]]:
    """GET /v1/calls/{id}/events agrees with the webhooks: same types, sequences 1..n."""
    events = await service.api_events(call_id)
    got = [(e.get("sequence"), e.get("type")) for e in events]
    assert [e["type"] for e in events] == list(types), got
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1)), got
    webhook_ids = [d.event_id for d in service.receiver.events(call_id)]
    assert [e["id"] for e in events] == webhook_ids, (got, webhook_ids)
    return events


def check_end(
    call: Mapping[str, Any],
    *,
    cause: str,
    by: str,
    sip_code: int | frozenset[int | None] | None,
) -> None:
    """A terminated call with this end; ``sip_code`` may be a set of acceptable values."""
    assert call["state"] == "terminated", call
    end = call["end"]
    assert end is not None, call
    assert (end["cause"], end["by"]) == (cause, by), end
    if isinstance(sip_code, frozenset):
        assert end["sip_code"] in sip_code, end
    else:
        assert end["sip_code"] == sip_code, end
    assert call["ended_at"] is not None, call


def check_request(call: Mapping[str, Any], case: str, *, with_body: bool = True) -> None:
    """The inbound call object echoes the INVITE as SIPp sent it (SIP.js Invitation.request)."""
    assert call["direction"] == "inbound", call
    request = call["request"]
    assert request is not None, call
    headers = {name.lower(): values for name, values in request["headers"].items()}
    assert headers.get(CASE_HEADER.lower()) == [case], request["headers"]
    assert headers.get("subject") == ["callctl inbound interop"], request["headers"]
    assert request["uri"].startswith("sip:service@127.0.0.1:"), request
    assert call["remote_identity"]["uri"].startswith("sip:sipp@127.0.0.1:"), call
    assert call["remote_identity"]["display_name"] == "SIPp Caller", call
    if with_body:
        assert request["content_type"] == "application/sdp", request
        assert "m=audio" in (request["body"] or ""), request
    else:
        assert not request["body"], request


def sipp_statuses(result: SippResult) -> list[int]:
    """Status codes SIPp received, in order (retransmissions included)."""
    return [m.status for m in result.received() if m.status is not None]


def sipp_methods_sent(result: SippResult) -> list[str]:
    return [m.method for m in result.sent() if m.method is not None]


async def wait_initiated(
    service: InboundService, process: SippProcess, *, count: int = 1
) -> list[Delivery]:
    """The first ``count`` call.initiated events; fails with SIPp's log if SIPp ends first."""
    receiver = service.receiver

    def initiated() -> list[Delivery]:
        return receiver.find("call.initiated")

    waiter = asyncio.ensure_future(
        receiver.wait_for(lambda _d: len(initiated()) >= count, EVENT_TIMEOUT)
    )
    ended = asyncio.ensure_future(process.proc.wait())
    try:
        done, _ = await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done and waiter.exception() is None:
            return initiated()[:count]
    finally:
        waiter.cancel()
        ended.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await waiter
    await process.terminate()
    result = await process.wait()
    raise AssertionError(
        f"{len(initiated())} of {count} call.initiated events; events "
        f"{[(e.call_id, e.sequence, e.type) for e in receiver.events()]}\n{result.describe()}"
    )


def sipp_lost_count(result: SippResult) -> int:
    """Messages SIPp dropped on purpose (``-lost``): the sum of the "Lost" column of the
    final scenario screen it prints on exit (dropped messages are not in its message log)."""
    lines = result.stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.rstrip().endswith("Lost")]
    assert headers, f"no scenario screen on SIPp's stdout:\n{result.stdout[-2000:]}"
    start = headers[-1]
    column = lines[start].rindex("Lost")
    total = 0
    for line in lines[start + 1 :]:
        if not line.strip() or line.lstrip().startswith("["):
            break
        cell = line[column - 4 : column + 8].strip()
        total += int(cell) if cell.isdigit() else 0
    return total


# SIPp writes these notes into its message log without a line break, so the entry after one
# would not start a line and `sipp.parse_message_log` would skip it.
def sipp_messages(result: SippResult) -> list[SippMessage]:
    """Every message of SIPp's log (the harness copes with ``-lost`` notes)."""
    path = Path(result.command[result.command.index("-message_file") + 1])
    return parse_message_log(path.read_bytes() if path.is_file() else b"")


def sipp_dialog(result: SippResult, sip_call_id: str) -> str:
    """SIPp's messages of one SIP Call-ID as 'time direction start-line (CSeq)' lines."""
    return "\n".join(
        f"{m.timestamp} {m.direction:8} {m.start_line} ({m.header('CSeq')})"
        for m in sipp_messages(result)
        if m.header("Call-ID") == sip_call_id
    )
