"""Graceful shutdown, end to end: SIGTERM to `callctl serve` with calls up.

The service runs as a subprocess (as in test_crash_recovery) with CALLCTL_DRAIN_SECONDS=8.
SIPp answers one call and keeps another ringing. After SIGTERM, while the service drains:

* a new SIPp INVITE gets 503 with a Retry-After (RFC 3261 §21.5.4);
* ``POST /v1/calls`` gets a 503 problem+json, ``/readyz`` is not ready;
* actions on live calls still work: the established call is hung up with ``bye`` and
  ends ``local_bye`` within the drain (SIPp gets the BYE);
* the ringing call outlives the drain and is CANCELled at its end (cause ``shutdown``);
* every event reaches the receiver in order; the process exits 0.

Every wait is bounded and woken by what it waits for (a log line, a delivery, SIPp's exit).
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
from test_crash_recovery import (
    WAIT,
    branch_of,
    check_call_stream,
    dial,
    first,
    service_env,
    service_process,
    sipp_done,
    start_sipp,
    uac_run,
    uas_run,
    webhook_receiver,
)

DRAIN_SECONDS = 8


async def test_sigterm_drains_then_exits_zero(empty_database_url: str, tmp_path: Path) -> None:
    workdir = tmp_path / "sipp"
    async with webhook_receiver() as receiver:
        env = service_env(empty_database_url, receiver, CALLCTL_DRAIN_SECONDS=str(DRAIN_SECONDS))
        async with service_process(env) as service:
            await service.start()
            answering = await start_sipp(uas_run(workdir, "crash_uas_answer.xml"))
            ringing = await start_sipp(uas_run(workdir, "crash_uas_ringing.xml"))
            try:
                async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
                    established = (await dial(http, answering))["id"]
                    early = (await dial(http, ringing, timeout=120))["id"]
                    await receiver.wait_event("call.answered", established, timeout=WAIT)
                    await receiver.wait_event("call.progress", early, timeout=WAIT)

                    assert service.proc is not None
                    service.proc.send_signal(signal.SIGTERM)
                    await service.wait_line("draining: no new calls", WAIT)

                    # New INVITEs: 503 + Retry-After.
                    refused = await sipp_done(
                        await start_sipp(uac_run(workdir, "crash_uac_drain.xml", service.sip_addr))
                    )
                    final = [m for m in refused.received() if (m.status or 0) >= 200]
                    assert [m.status for m in final] == [503], refused.describe()
                    assert int(final[0].header("Retry-After") or "0") >= 1

                    # New calls over REST: 503 problem+json; not ready.
                    response = await http.post(
                        "/v1/calls", json={"to": f"sip:bob@127.0.0.1:{answering.local_port}"}
                    )
                    assert response.status_code == 503, response.text
                    assert response.headers["content-type"] == "application/problem+json"
                    assert response.json()["status"] == 503
                    assert (await http.get("/readyz")).status_code == 503

                    # Live calls can still be acted on during the drain.
                    bye = await http.post(f"/v1/calls/{established}/bye", json={})
                    assert bye.status_code == 200, bye.text
                    ended = await receiver.wait_event("call.ended", established, timeout=WAIT)
                    assert ended.call["end"]["cause"] == "local_bye"
                    assert not receiver.find("call.ended", early)  # still ringing

                code = await service.wait_exit()
                assert code == 0, "\n".join(service.lines[-40:])
                answered_result = await sipp_done(answering)
                ringing_result = await ringing.wait()
            finally:
                for process in (answering, ringing):
                    await process.terminate()

            assert first(answered_result.received(), "BYE")
            received = ringing_result.received()
            invite, cancel = first(received, "INVITE"), first(received, "CANCEL")
            assert branch_of(cancel) == branch_of(invite)

            # Everything was flushed to the receiver before the exit.
            for call_id in (established, early):
                check_call_stream(receiver, call_id)
            end = receiver.find("call.ended", early)[0].call["end"]
            assert (end["cause"], end["by"]) == ("shutdown", "system")
